"""Adversarial-training methods (issue 13): PGD training, AR-AT and the LSP-style term, against direct
computations; the split BatchNorm's routing; bad settings rejected before any data is loaded; resume exact."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repspec_utils import adversarial as ADV, train as T
from repspec_utils.attacks import pgd_examples
from repspec_utils.models import MLP, cifar_resnet18
from repspec_utils.train import MethodParts, TrainConfig, train

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
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "b"))

    def interrupt(epoch):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, checkpoint_every_s=0, on_epoch_end=interrupt)
    resumed = train(cfg, progress=False, checkpoint_every_s=0)
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
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "b"))

    def interrupt(epoch):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, progress=False, checkpoint_every_s=0, on_epoch_end=interrupt)
    resumed = train(cfg, progress=False, checkpoint_every_s=0)
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
])
def test_bad_settings_fail_before_any_work(method, changes, match, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("data was loaded before the config was checked")

    monkeypatch.setattr(T, "get_data", no_data)
    with pytest.raises(ValueError, match=match):
        train(DIGITS.replace(method=method, method_kwargs={}).replace(**changes), progress=False)


def test_method_parts_of_a_plain_penalty():
    assert T.method_parts(None) == MethodParts()
    sentinel = object()
    assert T.method_parts(sentinel).penalty is sentinel
