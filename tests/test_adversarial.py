"""Adversarial-training methods (issue 13): PGD training, AR-AT and the LSP-style term, against direct
computations; the split BatchNorm's routing; bad settings rejected before any data is loaded; resume exact."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repspec_utils import training
from repspec_utils.attacks import pgd_examples
from repspec_utils.defences import adversarial as ADV
from repspec_utils.models import MLP, cifar_resnet18
from repspec_utils.training import MethodParts, TrainConfig, loop, train

DIGITS = TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [32], "init": "torch"}, method="pgd_at",
                     lam=0.0, lr=0.2, batch_size=128, epochs=4, burn_in=2, seed=3,
                     method_kwargs={"eps": 0.1, "steps": 3})


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "cache"))


def _tiny_bn_mlp(seed=0):
    m = MLP(6, [8], 3, init="torch", seed=seed, batchnorm=True)
    cfg = TrainConfig(dataset="digits", model={"kind": "mlp", "widths": [8], "batchnorm": True}, method="arat",
                      lam=2.0, seed=seed)
    ADV.prepare_arat(cfg, m)
    return m.train()


# ----------------------------------------------------------------------------------------------------
# PGD training
# ----------------------------------------------------------------------------------------------------
def test_pgd_objective_trains_on_the_pgd_examples():
    """The wrapped objective is the base objective at the PGD examples of that step (eval-mode model, the
    step's generator drawn from the epoch's), and leaves the parameters' gradients untouched."""
    torch.manual_seed(0)
    model = MLP(6, [8], 3, init="torch", seed=0)
    x, y = torch.rand(16, 6), torch.randint(0, 3, (16,))
    seen = {}

    def base(m, xb, yb, gen):
        seen["x"] = xb
        return F.cross_entropy(m(xb), yb), m.features(xb), 0

    wrapped = ADV.make_pgd_wrap(DIGITS)(base)
    gen = torch.Generator().manual_seed(5)
    wrapped(model, x, y, gen)
    assert all(p.grad is None for p in model.parameters())
    gen = torch.Generator().manual_seed(5)
    step_gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
    expect = pgd_examples(model.eval(), x, y, 0.1, 3, 2.5 * 0.1 / 3, (0.0, 1.0), step_gen)
    assert torch.equal(seen["x"], expect)
    assert (seen["x"] - x).abs().max() <= 0.1 + 1e-7 and not torch.equal(seen["x"], x)


def test_pgd_settings_defaults_by_dataset():
    assert ADV.pgd_settings(DIGITS.replace(method_kwargs={})) == {"eps": 0.1, "steps": 10, "alpha": 0.025}
    cifar = ADV.pgd_settings(DIGITS.replace(dataset="cifar10_synthetic", method_kwargs={}))
    assert cifar == {"eps": 8 / 255, "steps": 10, "alpha": 2 / 255}


# ----------------------------------------------------------------------------------------------------
# AR-AT
# ----------------------------------------------------------------------------------------------------
def test_arat_loss_matches_a_direct_computation():
    m = _tiny_bn_mlp()
    g = torch.Generator().manual_seed(1)
    x, x_adv = torch.rand(10, 6, generator=g), torch.rand(10, 6, generator=g)
    y = torch.randint(0, 3, (10,), generator=g)
    w_adv, lam = 0.7, 2.0
    loss, align, feats, n_correct = ADV.arat_loss(m, x, x_adv, y, w_adv, lam)

    # by hand: the two BatchNorm copies applied explicitly, in train mode (batch statistics)
    W, b, R = m.hidden[0].weight, m.hidden[0].bias, m.readout
    bn = m.norms[0]

    def branch(inp, norm):
        phi = F.gelu(norm(inp @ W.T + b)) / math.sqrt(8)
        return R(phi), phi

    logits_c, phi_c = branch(x, bn.clean)
    logits_a, phi_a = branch(x_adv, bn.adv)
    h = m.arat_predictors[0]
    cos = F.cosine_similarity(h(phi_a), phi_c, dim=1)
    direct = w_adv * F.cross_entropy(logits_a, y) + (1 - w_adv) * F.cross_entropy(logits_c, y) + lam * (1 - cos).mean()
    assert torch.allclose(loss, direct, rtol=1e-5, atol=1e-6)
    assert torch.allclose(align, (1 - cos).mean(), rtol=1e-5, atol=1e-6)
    assert torch.allclose(feats, phi_a, atol=1e-6) and n_correct == int((logits_a.argmax(1) == y).sum())


def test_arat_alignment_does_not_reach_the_clean_branch():
    """Stop-gradient: the cosine term sends no gradient to the clean BatchNorm copy, and its gradient on the
    shared weights equals the one computed with the clean features as constants."""
    m = _tiny_bn_mlp()
    g = torch.Generator().manual_seed(2)
    x, x_adv, y = torch.rand(10, 6, generator=g), torch.rand(10, 6, generator=g), torch.randint(0, 3, (10,), generator=g)
    _, align, _, _ = ADV.arat_loss(m, x, x_adv, y, 0.5, 1.0)
    clean_bn, adv_bn, W = m.norms[0].clean.weight, m.norms[0].adv.weight, m.hidden[0].weight
    g_clean, g_adv, g_w = torch.autograd.grad(align, [clean_bn, adv_bn, W], allow_unused=True)
    assert g_clean is None or torch.count_nonzero(g_clean) == 0
    assert torch.count_nonzero(g_adv) > 0
    with torch.no_grad(), ADV.bn_route(m, "clean"):
        _, _, z_c = ADV._forward_aligned(m, x, ["features"])
    with ADV.bn_route(m, "adv"):
        _, _, z_a = ADV._forward_aligned(m, x_adv, ["features"])
    by_hand = (1 - F.cosine_similarity(m.arat_predictors[0](z_a[0]), z_c[0], dim=1)).mean()
    (g_w_ref,) = torch.autograd.grad(by_hand, [W])
    assert torch.allclose(g_w, g_w_ref, rtol=1e-5, atol=1e-7)


def test_split_bn_routes_running_statistics():
    """A clean batch updates only the clean copy's running statistics, an adversarial one only the adversarial
    copy's; evaluation uses the adversarial copy."""
    m = _tiny_bn_mlp()
    bn = m.norms[0]
    before = {k: v.clone() for k, v in bn.state_dict().items()}
    with ADV.bn_route(m, "clean"):
        m(torch.rand(12, 6) * 3)
    after = bn.state_dict()
    assert not torch.equal(after["clean.running_mean"], before["clean.running_mean"])
    assert torch.equal(after["adv.running_mean"], before["adv.running_mean"])
    assert torch.equal(after["adv.running_var"], before["adv.running_var"])
    assert bn.route == "adv"  # restored
    with torch.no_grad():
        bn.adv.running_mean.fill_(5.0)
    m.eval()
    x = torch.rand(4, 6)
    z = m.hidden[0](x)
    expect = F.gelu(bn.adv(z)) / math.sqrt(8)
    assert torch.allclose(m.features(x), expect)
    with ADV.bn_route(m, "clean"):
        assert not torch.allclose(m.features(x), expect)


def test_split_batchnorm_on_resnet18_and_its_aligned_layers():
    net = cifar_resnet18(seed=0)
    n_bn = sum(isinstance(x, nn.BatchNorm2d) for x in net.modules())
    ADV.split_batchnorm(net)
    assert sum(isinstance(x, ADV.SplitBatchNorm) for x in net.modules()) == n_bn
    assert not any(isinstance(x, nn.BatchNorm2d) and not any(x is s.clean or x is s.adv for s in net.modules()
                                                             if isinstance(s, ADV.SplitBatchNorm))
                   for x in net.modules())
    assert ADV.aligned_layer_names(net) == list(ADV.RESNET_ALIGNED)
    net.eval()
    x = torch.rand(2, 3, 32, 32)
    _, feats, z = ADV._forward_aligned(net, x, ADV.RESNET_ALIGNED)
    assert [t.shape for t in z] == [torch.Size([2, 512])] * 4
    # bn2 is taken before the residual add: its pooled ReLU differs from the block output's
    block_out = {}
    h = net.layer4[1].register_forward_hook(lambda mod, a, out: block_out.setdefault("o", out))
    net.features(x)
    h.remove()
    assert not torch.allclose(z[3], block_out["o"].mean(dim=(2, 3)))


def _interrupted_then_resumed(cfg, cache_dir, monkeypatch):
    """Train cfg into `cache_dir`, interrupted after epoch 3 (inside the branch), then resumed: the result."""
    monkeypatch.setenv("REPSPEC_CACHE", str(cache_dir))

    def interrupt(epoch):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, checkpoint_every_s=0, on_epoch_end=interrupt)
    return train(cfg, progress=False, checkpoint_every_s=0)


def test_arat_trains_resumes_and_loads_from_cache(tmp_path, monkeypatch):
    cfg = DIGITS.replace(method="arat", lam=1.0, model={"kind": "mlp", "widths": [32], "init": "torch",
                                                        "batchnorm": True})
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "a"))
    ref = train(cfg, progress=False)
    assert isinstance(ref.model.norms[0], ADV.SplitBatchNorm) and hasattr(ref.model, "arat_predictors")
    assert ref.history["penalty"].iloc[-1] > 0
    again = train(cfg, progress=False)  # from the cache: the prepared architecture, the same weights
    for a, b in zip(ref.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)
    resumed = _interrupted_then_resumed(cfg, tmp_path / "b", monkeypatch)
    for a, b in zip(ref.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["pgd_at", "rep+pgd_at", "lsp", "lsp+pgd_at"])
def test_methods_train_and_resume_exactly(method, tmp_path, monkeypatch):
    cfg = DIGITS.replace(method=method, lam=0.05, method_kwargs={} if method == "lsp" else DIGITS.method_kwargs)
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "a"))
    ref = train(cfg, progress=False)
    assert ref.history["test_acc"].iloc[-1] > 0.3
    if method != "pgd_at":
        assert ref.history["penalty"].iloc[-1] > 0
    resumed = _interrupted_then_resumed(cfg, tmp_path / "b", monkeypatch)
    for a, b in zip(ref.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------
# LSP-style
# ----------------------------------------------------------------------------------------------------
def test_lsp_zero_when_distances_preserved_up_to_scale_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 12, generator=g)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=g, dtype=torch.float64))
    phi = 3.7 * (x.double() @ q.T) + 1.5  # an isometry up to scale, plus a shift
    assert ADV.lsp_kl(x, phi, phi, k=10).item() < 1e-5
    warped = torch.tanh(4 * x @ torch.randn(12, 6, generator=g))
    assert ADV.lsp_kl(x, warped, warped, k=10).item() > 1e-2
    # the query side matters: a perturbed query breaks the match
    assert ADV.lsp_kl(x, phi + 0.5 * torch.randn(phi.shape, generator=g, dtype=phi.dtype), phi, k=10) > 1e-2


def test_lsp_gradient_reaches_both_sides():
    x = torch.rand(20, 5)
    a = torch.randn(20, 4, requires_grad=True)
    b = torch.randn(20, 4, requires_grad=True)
    ADV.lsp_kl(x, a, b, k=5).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------------------
# bad input: rejected by validate, before any data is loaded
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, changes, match", [
    ("pgd_at", {"method_kwargs": {"eps": -0.1}}, "eps"),
    ("pgd_at", {"method_kwargs": {"eps": 1.5}}, "eps"),
    ("pgd_at", {"method_kwargs": {"steps": 0}}, "steps"),
    ("rep+pgd_at", {"method_kwargs": {"alpha": 0.0}}, "alpha"),
    ("pgd_at", {"method_kwargs": {"epsilon": 0.1}}, "does not know"),
    ("lsp", {"lam": -1.0}, "lam"),
    ("lsp", {"method_kwargs": {"k": 0}}, "neighbours"),
    ("lsp+pgd_at", {"method_kwargs": {"k": 5, "steps": -2}}, "steps"),
    ("arat", {"method_kwargs": {"split_bn": True}}, "without BatchNorm"),
    ("arat", {"method_kwargs": {"layers": ["layer9.bn"]}}, "do not exist"),
    ("arat", {"model": {"kind": "cifar_resnet18"}, "dataset": "cifar10_synthetic",
              "method_kwargs": {"layers": ["layer4.0.bn3"]}}, "do not exist"),
    ("pgd_at", {"dataset": "xor", "model": {"kind": "mlp", "widths": [8]}}, "image dataset"),
    ("lsp+pgd_at", {"dataset": "sin", "model": {"kind": "mlp", "widths": [8]}}, "image dataset"),
])
def test_bad_settings_fail_before_any_work(method, changes, match, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("data was loaded before the config was checked")

    monkeypatch.setattr(loop, "get_data", no_data)
    with pytest.raises(ValueError, match=match):
        train(DIGITS.replace(method=method, method_kwargs={}).replace(**changes), progress=False)


def test_method_parts_of_a_plain_penalty():
    assert training.method_parts(None) == MethodParts()
    sentinel = object()
    assert training.method_parts(sentinel).penalty is sentinel


# ----------------------------------------------------------------------------------------------------
# evaluation: white-box robust accuracy (PGD, AutoAttack) and the comparison's tables
# ----------------------------------------------------------------------------------------------------
def _linear_case(n=120, d=32, c=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = nn.Linear(d, c)
    with torch.no_grad():
        m.weight.copy_(torch.randn(c, d, generator=g) * 3 / math.sqrt(d))
        m.bias.copy_(torch.randn(c, generator=g) * 0.1)
    x = torch.rand(n, d, generator=g) * 0.5 + 0.25  # ε ≤ 0.25 never meets the box [0, 1]
    y = torch.randint(0, c, (n,), generator=g)
    return m, x, y


def _exact_linf_robust(m, x, y, eps):
    """Closed form for a linear model off the box: correct and every margin F_y − F_k > ε‖w_y − w_k‖₁."""
    W, b = m.weight.detach().double(), m.bias.detach().double()
    F_ = x.double() @ W.T + b
    margin = F_.gather(1, y[:, None]) - F_
    l1 = (W[y][:, None, :] - W[None]).abs().sum(-1)
    worst = margin - eps * l1
    worst[torch.arange(len(y)), y] = math.inf
    return worst.min(1).values > 0


def test_autoattack_and_pgd_against_a_linear_models_closed_form():
    """AutoAttack reaches the exact L∞ robust accuracy of a linear model; PGD (cross-entropy ascent) can only
    overstate it; both agree with the clean accuracy at ε = 0."""
    from repspec_utils.evaluation import whitebox as E

    m, x, y = _linear_case()
    for eps in (0.02, 0.06):
        exact = _exact_linf_robust(m, x, y, eps).double().mean().item()
        aa, per_sample = E.autoattack_accuracy(m, x, y, eps, n_classes=10, seed=0)
        assert aa == pytest.approx(exact, abs=1e-12) and per_sample.shape == (len(y),)
        assert exact < 1.0 and exact > 0.0  # a case where the attack has work to do
        from repspec_utils.attacks import robust_accuracy
        assert robust_accuracy(m, x, y, eps, steps=40) >= exact - 1e-12
    with pytest.raises(ValueError, match="at least 4 classes"):
        E.autoattack_accuracy(nn.Linear(4, 2), torch.rand(3, 4), torch.zeros(3, dtype=torch.long), 0.1, n_classes=2)


def test_whitebox_robustness_checks_and_caches(tmp_path):
    from repspec_utils.data import ArrayDataset
    from repspec_utils.evaluation import whitebox as E

    m, x, y = _linear_case(n=60)
    ds = ArrayDataset(x=x, y=y, name="lin", source="generated", box=(0.0, 1.0), n_classes=10)
    key = {"test": "linear"}
    a = E.whitebox_robustness(m, ds, [0.0, 0.02, 0.06], 40, pgd_steps=5, autoattack_eps=0.06, autoattack_n=20,
                              cache_key=key)
    assert a["pgd_acc_eps=0"] == pytest.approx(a["clean_acc_eval"])
    assert a["n_eval"] == 40 and a["n_autoattack"] == 20
    assert a["autoattack_acc"] == pytest.approx(_exact_linf_robust(m, *_first(ds, 40, 20), 0.06).double().mean().item())
    b = E.whitebox_robustness(m, ds, [0.0, 0.02, 0.06], 40, pgd_steps=5, autoattack_eps=0.06, autoattack_n=20,
                              cache_key=key)
    assert a == b  # from the cache, seconds included
    for kwargs, match in (({"eps": [1.5]}, "ε"), ({"n": 61}, "n must"), ({"pgd_steps": 0}, "pgd_steps"),
                          ({"autoattack_eps": 0.1, "autoattack_n": 50}, "autoattack_n")):
        args = {"eps": [0.1], "n": 40, **kwargs}
        with pytest.raises(ValueError, match=match):
            E.whitebox_robustness(m, ds, args.pop("eps"), args.pop("n"), **args)


def _first(ds, n, k, seed=0):
    idx = torch.randperm(len(ds.y), generator=torch.Generator().manual_seed(seed))[:n][:k]
    return ds.x[idx], ds.y[idx]


def test_baseline_configs_validate_on_mnist_and_the_cifar_recipe():
    from repspec_utils.experiments import recipes

    for dataset in ("mnist", "cifar10_synthetic"):
        configs = recipes.baseline_configs(dataset, seeds=[0, 1])
        assert len(configs) == 2 * len(recipes.BASELINE_METHODS)
        for c in configs:
            training.validate(c)
        arat = next(c for c in configs if c.method == "arat")
        assert arat.method_kwargs["split_bn"] is True and arat.lam == 30.0
        if dataset == "mnist":
            assert arat.model["batchnorm"] is True and ADV.pgd_settings(arat)["eps"] == 0.1
        else:
            assert arat.model == {"kind": "cifar_resnet18"} and ADV.pgd_settings(arat)["alpha"] == pytest.approx(2 / 255)
    small = recipes.baseline_configs("cifar10_synthetic", seeds=[0], image_size=8, reg_every=3, n_train=64,
                                     n_test=50, train_eps=4 / 255, train_steps=2, lr=0.01, batch_size=32)
    for c in small:  # the resized stand-in (a 'transfer_' dataset of [0, 1] images) passes the PGD box check
        training.validate(c)
        assert c.dataset == "transfer_cifar10_synthetic" and c.data_kwargs == {"image_size": 8, "n_train": 64,
                                                                                "n_test": 50}
        assert (c.reg_every, c.lr, c.batch_size) == (3, 0.01, 32)
    pgd = ADV.pgd_settings(next(c for c in small if c.method == "pgd_at"))
    assert pgd["eps"] == pytest.approx(4 / 255) and pgd["alpha"] == pytest.approx(2.5 * (4 / 255) / 2)
    ablation = next(c for c in recipes.baseline_configs("mnist", seeds=[0], arat_bn=False) if c.method == "arat")
    assert "batchnorm" not in ablation.model and ablation.method_kwargs["split_bn"] is False
    with pytest.raises(ValueError, match="knows the methods"):
        recipes.baseline_configs("mnist", methods=["none", "trades"])


def test_defence_models_one_row_per_model_and_readout():
    import pandas as pd

    from repspec_utils.analysis import tables

    rows = []
    for method, kw in (("none", None), ("pgd_at", "eps=0.1, steps=10")):
        for readout in ("original", "refit"):
            for attack, d in (("tangent", 2.0), ("fmn", 1.5)):
                for i in range(3):
                    rows.append({"dataset": "mnist", "width": "8", "method": method, "lam": 0.0,
                                 "weight_decay": 0.0, "seed": 0, "max_layer": -1, "epochs": 2, "burn_in": 1,
                                 "method_kwargs": kw, "readout": readout, "attack": attack, "index": i, "label": 1,
                                 "distance": d + i + (readout == "refit"), "queries": 5, "success": True,
                                 "test_acc": 0.9, "certified_radius": float("nan")})
    samples = pd.DataFrame(rows)
    wb = samples.drop_duplicates(["method", "readout"])[["dataset", "width", "method", "lam", "weight_decay", "seed",
                                                         "max_layer", "epochs", "burn_in", "method_kwargs",
                                                         "readout", "test_acc"]].assign(**{"pgd_acc_eps=0.1": 0.5})
    out = tables.defence_models(samples, wb)
    assert len(out) == 4 and set(out.readout) == {"original", "refit"}
    row = out[(out.method == "pgd_at") & (out.readout == "refit")].iloc[0]
    assert row.ta_mean_distance == pytest.approx(4.0) and row.fmn_mean_distance == pytest.approx(3.5)
    assert row["pgd_acc_eps=0.1"] == 0.5


def test_epoch_times_relative_to_none():
    import types

    import pandas as pd

    from repspec_utils.experiments import run

    def result(method, seed, times):
        h = pd.DataFrame({"phase": ["burn-in", method, method], "epoch_time": times})
        return types.SimpleNamespace(config=DIGITS.replace(method=method, seed=seed, method_kwargs={}), history=h)

    out = run.epoch_times([result("none", 0, [9.0, 1.0, 3.0]), result("pgd_at", 0, [9.0, 22.0, 18.0]),
                              result("none", 1, [1.0, 4.0, 4.0]), result("pgd_at", 1, [1.0, 40.0, 40.0])])
    assert list(out.epoch_seconds) == [2.0, 20.0, 4.0, 40.0]  # branch epochs only
    assert list(out.epoch_time_vs_none) == [1.0, 10.0, 1.0, 10.0]


def test_whitebox_table_for_trained_models_both_readouts():
    from repspec_utils.experiments import run

    results = [train(DIGITS.replace(method=m, lam=0.05 if m == "rep" else 0.0, method_kwargs={}), progress=False)
               for m in ("none", "rep")]
    for readout in ("original", "refit"):
        t = run.whitebox_table(results, [0.0, 0.1], 30, readout=readout, pgd_steps=3)
        assert list(t.method) == ["none", "rep"] and (t.readout == readout).all() and (t.n_eval == 30).all()
        assert (t["pgd_acc_eps=0"] == t.clean_acc_eval).all() and (t["pgd_acc_eps=0.1"] <= t.clean_acc_eval).all()


def test_defence_comparison_tables_and_bad_input():
    from repspec_utils.analysis import plotting, tables
    from repspec_utils.experiments import run

    results = [train(DIGITS.replace(method=m, method_kwargs=kw), progress=False)
               for m, kw in (("none", {}), ("pgd_at", {"eps": 0.1, "steps": 2}))]
    with pytest.raises(ValueError, match="autoattack_eps"):
        run.defence_comparison(results, 2, [0.1], 10, n_autoattack=5)
    with pytest.raises(ValueError, match="readouts"):
        run.defence_comparison(results, 2, [0.1], 10, readouts=("own",))
    out = run.defence_comparison(results, 2, [0.05, 0.1], 10, attack_kwargs={"T": 1}, fmn_steps=5, pgd_steps=2)
    assert out.pgd_columns == [tables.pgd_column(0.05), "pgd_acc_eps=0.1"]
    assert len(out.models) == 4 and set(out.models.readout) == {"original", "refit"}
    assert (out.samples.groupby(["method", "readout", "attack"]).size() == 2).all() and len(out.samples) == 16
    assert list(out.timing.method) == ["none", "pgd_at"] and out.timing.epoch_time_vs_none.iloc[0] == 1.0
    assert {f"{v}_mean" for v in out.values} <= set(out.summary.columns) and "autoattack_acc" not in out.values
    fig = plotting.plot_defences(out.models, "pgd_acc_eps=0.1", suptitle="x", suptitle_color="darkred")
    assert len(fig.axes) == 6 and fig._suptitle.get_color() == "darkred"
    with pytest.raises(ValueError, match="pgd_acc_eps=0.3"):
        plotting.plot_defences(out.models, "pgd_acc_eps=0.3")


def test_defence_models_keep_a_model_whose_attack_never_succeeded():
    """A model whose Tangent Attack found no adversarial point on any sample (seen on a near-chance stand-in ResNet)
    keeps its row, with a NaN distance and a success rate of 0; the others' means are over their successes."""
    from repspec_utils.analysis import tables

    rows = []
    for method, ta in (("none", [1.0, 3.0]), ("arat", [np.inf, np.inf])):
        for attack, dist in (("tangent", ta), ("fmn", [0.5, 0.7])):
            for i, d in enumerate(dist):
                rows.append({"dataset": "mnist", "method": method, "seed": 0, "readout": "original",
                             "attack": attack, "index": i, "distance": d, "success": bool(np.isfinite(d)),
                             "queries": 10, "test_acc": 0.9 if method == "none" else 0.1, "data_source": "real"})
    samples = pd.DataFrame(rows)
    wb = pd.DataFrame([{"dataset": "mnist", "method": m, "seed": 0, "readout": "original", "test_acc": 0.5,
                        "pgd_acc_eps=0.1": 0.25} for m in ("none", "arat")])
    models = tables.defence_models(samples, wb).set_index("method")
    assert len(models) == 2
    assert models.at["none", "ta_mean_distance"] == 2.0 and models.at["none", "ta_success_rate"] == 1.0
    assert np.isnan(models.at["arat", "ta_mean_distance"]) and models.at["arat", "ta_success_rate"] == 0.0
    assert models.at["arat", "n_attacked"] == 0 and models.at["arat", "test_acc"] == 0.1
    assert models.at["arat", "fmn_mean_distance"] == pytest.approx(0.6) and (models["pgd_acc_eps=0.1"] == 0.25).all()
    assert (models["data_source"] == "real").all()


def test_lsp_term_equals_the_full_neighbour_tensor_form():
    """issue 31: the LSP-style term computes its neighbour distances one slot at a time; it must equal the (B, k, p)
    form it replaced, value and gradient."""
    import math as _math

    g = torch.Generator().manual_seed(3)
    x = torch.rand(64, 20, generator=g)
    q = torch.randn(64, 30, generator=g, requires_grad=True)
    r = torch.randn(64, 30, generator=g, requires_grad=True)

    def reference(x, q, r, k):
        X = x.flatten(1)
        dx = torch.cdist(X, X).pow(2)
        dx.fill_diagonal_(_math.inf)
        dxn, nb = dx.topk(k, dim=1, largest=False)
        log_p = torch.log_softmax(-dxn / dxn.median(), dim=1)
        dphi = (q[:, None, :] - r[nb]).pow(2).sum(-1)
        log_q = torch.log_softmax(-dphi / dphi.detach().median(), dim=1)
        return (log_p.exp() * (log_p - log_q)).sum(1).mean()

    got = ADV.lsp_kl(x, q, r, k=7)
    want = reference(x, q, r, 7)
    assert abs(got.item() - want.item()) <= 1e-6 * max(1.0, abs(want.item()))
    gq, gr = torch.autograd.grad(got, (q, r))
    wq, wr = torch.autograd.grad(want, (q, r))
    torch.testing.assert_close(gq, wq, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gr, wr, rtol=1e-5, atol=1e-7)


def test_lsp_term_with_one_feature_tensor_for_both_sides():
    """Without PGD the query and reference features are one tensor (r is q): the gradient of both roles adds up,
    and must equal the (B, k, p) form's."""
    import math as _math

    g = torch.Generator().manual_seed(5)
    x = torch.rand(50, 12, generator=g)
    f = torch.randn(50, 40, generator=g, requires_grad=True)
    got = ADV.lsp_kl(x, f, f, k=6)
    X = x.flatten(1)
    dx = torch.cdist(X, X).pow(2)
    dx.fill_diagonal_(_math.inf)
    dxn, nb = dx.topk(6, dim=1, largest=False)
    log_p = torch.log_softmax(-dxn / dxn.median(), dim=1)
    dphi = (f[:, None, :] - f[nb]).pow(2).sum(-1)
    log_q = torch.log_softmax(-dphi / dphi.detach().median(), dim=1)
    want = (log_p.exp() * (log_p - log_q)).sum(1).mean()
    assert abs(got.item() - want.item()) <= 1e-6 * max(1.0, abs(want.item()))
    torch.testing.assert_close(torch.autograd.grad(got, f)[0], torch.autograd.grad(want, f)[0], rtol=1e-5, atol=1e-7)
