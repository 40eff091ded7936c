"""The authors' MLP (bias scaled with the readout), their epoch schedule and their re-fit convention (issue 26)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from repspec_utils.data import get_data
from repspec_utils.evaluation import bounds, robustness
from repspec_utils.evaluation import refit as evaluation_refit
from repspec_utils.experiments import recipes
from repspec_utils.models import MLP, BatchedMLP, BiasScaledLinear
from repspec_utils.training import TrainConfig, make_optimizer, supervised_loss, train, train_step

XOR = TrainConfig(dataset="xor", model={"kind": "mlp", "widths": [8], "bias_scaled": True}, method="rep", lam=1e-3,
                  lr=1.0, batch_size=4, epochs=40, burn_in=20, seed=400, schedule="reference")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(1)


def test_bias_scaled_mlp_is_the_authors_function():
    """F(x) = (W₂ φ(W₁x + b₁) + b₂)/√n with the raw parameters, N(0, 0.01²) init of every weight and bias."""
    m = MLP(3, [5], 4, seed=0, bias_scaled=True).double()
    assert isinstance(m.readout, BiasScaledLinear) and not isinstance(m.hidden[0], BiasScaledLinear)
    x = torch.randn(7, 3, dtype=torch.float64)
    W1, b1, W2, b2 = m.hidden[0].weight, m.hidden[0].bias, m.readout.weight, m.readout.bias
    want = (F.gelu(x @ W1.T + b1) @ W2.T + b2) / math.sqrt(5)
    torch.testing.assert_close(m(x), want, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(m.readout(m.features(x)), want, rtol=1e-12, atol=1e-15)
    old = MLP(3, [5], 4, seed=0).double()  # the same draws: only the bias's role differs
    for p, q in zip(m.parameters(), old.parameters()):
        assert torch.equal(p, q)
    assert not torch.allclose(old(x), want)


def test_deep_bias_scaled_mlp_scales_every_later_layer_by_its_fan_in():
    m = MLP(2, [6, 4], 3, seed=1, bias_scaled=True).double()
    x = torch.randn(5, 2, dtype=torch.float64)
    # the reference's deep MLP: z₁ = W₁x + b₁, z_l = (W_l a + b_l)/√n_{l-1}, a = φ(z) (raw activations)
    a = F.gelu(x @ m.hidden[0].weight.T + m.hidden[0].bias)
    a = F.gelu((a @ m.hidden[1].weight.T + m.hidden[1].bias) / math.sqrt(6))
    want = (a @ m.readout.weight.T + m.readout.bias) / math.sqrt(4)
    torch.testing.assert_close(m(x), want, rtol=1e-12, atol=1e-15)


def test_one_sgd_step_of_the_bias_scaled_mlp_equals_a_hand_computation():
    torch.manual_seed(0)
    n, lr, mom, wd = 6, 0.1, 0.9, 1e-2
    m = MLP(4, [n], 3, seed=3, bias_scaled=True).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    W1, b1, W2, b2 = (t.detach().clone().numpy() for t in (m.hidden[0].weight, m.hidden[0].bias,
                                                           m.readout.weight, m.readout.bias))
    cfg = TrainConfig(dataset="digits", model={"kind": "mlp"}, lr=lr, momentum=mom, weight_decay=wd)
    train_step(m, make_optimizer(cfg, m), supervised_loss, x, y)
    # by hand: forward, softmax cross-entropy gradient, backward through the 1/√n after the bias, SGD with weight decay
    xs = x.numpy()
    z = xs @ W1.T + b1
    phi = 0.5 * z * (1 + np.vectorize(math.erf)(z / math.sqrt(2)))
    dphi = 0.5 * (1 + np.vectorize(math.erf)(z / math.sqrt(2))) + z * np.exp(-z * z / 2) / math.sqrt(2 * math.pi)
    logits = (phi @ W2.T + b2) / math.sqrt(n)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dlog = (p - np.eye(3)[y.numpy()]) / len(xs)
    g_W2 = (dlog / math.sqrt(n)).T @ phi
    g_b2 = (dlog / math.sqrt(n)).sum(0)
    dz = (dlog / math.sqrt(n)) @ W2 * dphi
    g_W1, g_b1 = dz.T @ xs, dz.sum(0)
    for param, old, g in ((m.hidden[0].weight, W1, g_W1), (m.hidden[0].bias, b1, g_b1),
                          (m.readout.weight, W2, g_W2), (m.readout.bias, b2, g_b2)):
        np.testing.assert_allclose(param.detach().numpy(), old - lr * (g + wd * old), rtol=1e-10, atol=1e-13)


def test_batched_bias_scaled_mlp_members_equal_single_mlps():
    b = BatchedMLP([0, 1, 2], 2, [5, 3], 2, bias_scaled=True).double()
    x = torch.randn(6, 2, dtype=torch.float64)
    out = b(x)
    for i, s in enumerate([0, 1, 2]):
        single = MLP(2, [5, 3], 2, seed=s, bias_scaled=True).double()
        torch.testing.assert_close(out[i], single(x), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(b.member(i).double()(x), single(x), rtol=1e-12, atol=1e-14)


def test_certified_radius_uses_the_effective_bias():
    m = MLP(2, [6], 3, seed=4, bias_scaled=True)
    with torch.no_grad():
        m.readout.bias.mul_(1000)  # make the bias matter
    x = torch.randn(9, 2)
    net = bounds._Net(m)
    torch.testing.assert_close(net.logits(net.preacts(x.double())).float(), m(x), rtol=1e-5, atol=1e-5)


def test_reference_schedule_trains_201_and_202_epochs_and_none_is_one_continuous_run():
    none = train(XOR.replace(method="none"), progress=False)
    rep = train(XOR, progress=False)
    assert none.history["epoch"].max() == XOR.epochs + 1
    assert rep.history["epoch"].max() == XOR.epochs + 2
    # the first branch epoch is not regularised (the reference regularises after epoch index burn_in)
    branch = rep.history[rep.history["phase"] == "rep"].set_index("epoch")
    assert branch.loc[XOR.burn_in + 2, "penalty"] == 0 and branch.loc[XOR.burn_in + 3, "penalty"] > 0
    # None under the reference schedule is one run, so where it branches does not matter
    other = train(XOR.replace(method="none", burn_in=10), progress=False)
    for p, q in zip(none.model.parameters(), other.model.parameters()):
        assert torch.equal(p, q)
    # ... and a repspec-schedule None restarts its optimiser at the burn-in: another model
    restarted = train(XOR.replace(method="none", schedule="repspec"), progress=False)
    assert not torch.equal(restarted.model.readout.weight, none.model.readout.weight)


def test_recipes_use_the_reference_variant_by_default_and_keep_the_other():
    for cfgs in (recipes.xor_configs(seeds=[400]), recipes.sin_configs(seeds=[0]), recipes.mnist_configs(seeds=[0])):
        assert all(c.model.get("bias_scaled") is True and c.schedule == "reference" for c in cfgs)
    old = recipes.mnist_configs(seeds=[0], variant="repspec")
    assert all("bias_scaled" not in c.model and c.schedule == "repspec" for c in old)
    with pytest.raises(ValueError, match="unknown MLP variant 'authors'"):
        recipes.mnist_configs(variant="authors")
    with pytest.raises(ValueError, match="schedule"):
        train(XOR.replace(schedule="paper"), progress=False)


def _digits_model():
    train_ds, test_ds = get_data("digits")
    res = train(TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [64], "bias_scaled": True}, lr=0.5,
                            batch_size=128, epochs=4, burn_in=2, seed=0, schedule="reference"), progress=False)
    return res.model, train_ds, test_ds


def test_reference_refit_is_scikit_learns_default_fit_on_the_raw_activations():
    from sklearn.linear_model import LogisticRegression

    model, train_ds, test_ds = _digits_model()
    refit, acc = evaluation_refit.refit_readout(model, train_ds, test_ds)  # the default convention is the reference one
    raw = model.raw_features(train_ds.x).detach().double().numpy()
    clf = LogisticRegression().fit(raw, train_ds.y.numpy())  # the authors' fit: sklearn's defaults on φ
    want = clf.predict(model.raw_features(test_ds.x).detach().double().numpy())
    got = refit(test_ds.x).argmax(1).numpy()
    assert (got == want).mean() > 0.995
    assert acc == pytest.approx((want == test_ds.y.numpy()).mean(), abs=0.006)
    torch.testing.assert_close(refit.readout.weight.double(),
                               torch.from_numpy(clf.coef_) * math.sqrt(64), rtol=1e-5, atol=1e-5)
    scaled, _ = evaluation_refit.refit_readout(model, train_ds, test_ds, convention="scaled")
    assert not torch.allclose(scaled.readout.weight, refit.readout.weight, atol=1e-3)


@pytest.mark.parametrize("kwargs, match", [
    ({"convention": "authors"}, "unknown re-fit convention 'authors'"),
    ({"max_iter": 0}, "max_iter must be an integer >= 1, got 0"),
    ({"max_iter": 2.5}, "max_iter must be an integer >= 1, got 2.5"),
    ({"C": 0.0}, r"C \(inverse L2 strength\) must be a finite number > 0, got 0.0"),
    ({"C": float("inf")}, "C .* got inf"),
])
def test_bad_refit_settings_are_rejected_before_any_fit(kwargs, match, monkeypatch):
    def no_features(*a, **k):
        raise AssertionError("features computed before the settings were checked")

    monkeypatch.setattr(robustness, "features", no_features)
    m = MLP(2, [4], 2, seed=0)
    with pytest.raises(ValueError, match=match):
        evaluation_refit.refit_readout(m, None, None, **kwargs)


def test_the_readout_name_chooses_the_convention():
    from repspec_utils.analysis import tables

    assert tables.REFIT_READOUTS == {"refit": "reference", "refit_scaled": "scaled"}
    with pytest.raises(ValueError, match="readout must be one of"):
        tables.check_readout("refit_sklearn")
