"""Barlow Twins: the loss against a double loop, the views against torchvision, seeding, a few training steps."""

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from repspec_utils import training
from repspec_utils.defences import barlow
from repspec_utils.infra import registry
from repspec_utils.models import RepModel


# -------------------------------------------------------------------------------------------------- loss
def _loss_by_loops(z1, z2, lambd, eps=1e-5):
    b, d = z1.shape

    def std(z):
        out = torch.empty_like(z)
        for j in range(d):
            mean = sum(z[i, j] for i in range(b)) / b
            var = sum((z[i, j] - mean) ** 2 for i in range(b)) / b
            for i in range(b):
                out[i, j] = (z[i, j] - mean) / (var + eps) ** 0.5
        return out

    a, c = std(z1), std(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            cij = sum(a[n, i] * c[n, j] for n in range(b)) / b
            loss += (1 - cij) ** 2 if i == j else lambd * cij**2
    return loss


def test_barlow_loss_matches_double_loop():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(9, 5, generator=g, dtype=torch.float64) * 3 + 1
    z2 = 0.5 * z1 + torch.randn(9, 5, generator=g, dtype=torch.float64)
    for lambd in (0.005, 0.7):
        got = barlow.barlow_loss(barlow.standardize(z1), barlow.standardize(z2), lambd)
        assert got.item() == pytest.approx(float(_loss_by_loops(z1, z2, lambd)), rel=1e-10)
    # identical standardised views: C is their correlation matrix, diagonal 1, so only off-diagonal terms remain
    s = barlow.standardize(z1)
    corr = s.T @ s / len(s)
    assert barlow.barlow_loss(s, s, 1.0).item() == pytest.approx(((corr - torch.diag(corr.diagonal())) ** 2).sum().item()
                                                              + ((corr.diagonal() - 1) ** 2).sum().item())


def test_projector_batchnorm_is_the_standardisation():
    model = barlow.BarlowTwins(seed=0).train()
    assert isinstance(model, RepModel)
    assert model.projector.in_features == 512 and model.projector.out_features == 256 and model.projector.bias is None
    assert not model.bn.affine
    z = torch.randn(16, 256) * 2 + 3
    torch.testing.assert_close(model.bn(z), barlow.standardize(z), rtol=1e-5, atol=1e-5)
    # Φ, its layers and the readout are the backbone's
    assert model.feature_layers() == model.backbone.feature_layers()
    assert len(model.feature_layers(2)) == len(model.backbone.feature_layers(2)) < len(model.feature_layers())
    assert model.readout is model.backbone.readout
    assert {n for n, _ in model.named_parameters()} >= {"backbone.readout.weight", "projector.weight"}
    assert not any(n.startswith("readout.") for n, _ in model.named_parameters())  # no duplicate entries


# ------------------------------------------------------------------------------------------------- views
def test_batched_kernels_match_torchvision_image_by_image():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 3, 32, 32, generator=g)
    f = torch.tensor([0.6, 0.9, 1.0, 1.2, 1.4, 0.75])
    h = torch.tensor([-0.1, -0.05, 0.0, 0.03, 0.1, 0.5])
    cases = [(barlow.adjust_brightness, TF.adjust_brightness, f), (barlow.adjust_contrast, TF.adjust_contrast, f),
             (barlow.adjust_saturation, TF.adjust_saturation, f), (barlow.adjust_hue, TF.adjust_hue, h)]
    for mine, theirs, fac in cases:
        want = torch.stack([theirs(x[i], float(fac[i])) for i in range(6)])
        torch.testing.assert_close(mine(x, fac), want, rtol=0, atol=1e-5)
    sig = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.3])
    want = torch.stack([TF.gaussian_blur(x[i], [3, 3], [float(sig[i])] * 2) for i in range(6)])
    torch.testing.assert_close(barlow.gaussian_blur(x, sig, 3), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(barlow.grayscale(x), TF.rgb_to_grayscale(x), rtol=0, atol=1e-6)
    boxes = torch.cat([barlow.crop_params(20, 32, 32, (0.08, 1.0), (3 / 4, 4 / 3), g), torch.tensor([[0, 0, 32, 32]])])
    xs = torch.rand(len(boxes), 3, 32, 32, generator=g)
    want = torch.stack([TF.resized_crop(xs[i], *boxes[i].tolist(), [32, 32], antialias=True) for i in range(len(xs))])
    torch.testing.assert_close(barlow.resized_crop(xs, boxes, 32), want, rtol=0, atol=1e-5)


def test_crop_params_follow_torchvision_rule():
    from torchvision.transforms import RandomResizedCrop

    n, scale, ratio = 4000, (0.08, 1.0), (3 / 4, 4 / 3)
    boxes = barlow.crop_params(n, 32, 24, scale, ratio, torch.Generator().manual_seed(0))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 32).all() and (left + w <= 24).all()
    assert len({tuple(b) for b in boxes.tolist()}) > 1000  # per-image parameters
    torch.manual_seed(0)
    ref = torch.tensor([RandomResizedCrop.get_params(torch.zeros(3, 32, 24), scale, ratio) for _ in range(n)])
    for col in range(4):  # same distribution as torchvision's sampler: means agree within ~5 standard errors
        a, b = boxes[:, col].double(), ref[:, col].double()
        assert abs(a.mean() - b.mean()) < 5 * (a.var() / n + b.var() / n).sqrt()
    assert ((h * w).double() / (32 * 24)).min() >= 0.07  # area >= 8% up to rounding


@pytest.mark.parametrize("impl", ["batched", "torchvision"])
def test_views_are_seeded_per_image_and_in_the_box(impl):
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)).expand(8, -1, -1, -1).contiguous()
    global_state = torch.random.get_rng_state()
    a1, a2 = barlow.barlow_views(x, torch.Generator().manual_seed(5), impl)
    b1, b2 = barlow.barlow_views(x, torch.Generator().manual_seed(5), impl)
    c1, _ = barlow.barlow_views(x, torch.Generator().manual_seed(6), impl)
    assert torch.equal(torch.random.get_rng_state(), global_state)  # the caller's global RNG is untouched
    assert torch.equal(a1, b1) and torch.equal(a2, b2)
    assert not torch.equal(a1, c1) and not torch.equal(a1, a2)
    for v in (a1, a2, c1):
        assert v.shape == (8, 3, 32, 32) and v.dtype == torch.float32
        assert v.min() >= 0 and v.max() <= 1
    # eight copies of one image get eight different views (per-image parameters, not one per batch)
    assert len({tuple(v.flatten()[:64].tolist()) for v in a1}) == 8


def test_view_pipelines_are_the_asymmetric_barlow_ones():
    assert (barlow.VIEW1.blur_p, barlow.VIEW1.solarize_p) == (1.0, 0.0)
    assert (barlow.VIEW2.blur_p, barlow.VIEW2.solarize_p) == (0.1, 0.2)
    for v in (barlow.VIEW1, barlow.VIEW2):
        assert v.size is None and v.jitter == (0.4, 0.4, 0.2, 0.1) and v.jitter_p == 0.8 and v.gray_p == 0.2
    # solarisation only in view 2: with p = 1 every value >= 0.5 is inverted
    x = torch.full((4, 3, 32, 32), 0.75)
    spec = barlow.ViewSpec(scale=(1.0, 1.0), ratio=(1.0, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=1.0)
    torch.testing.assert_close(barlow.augment_view(x, spec, torch.Generator().manual_seed(0)), torch.full_like(x, 0.25))


# ---------------------------------------------------------------------------------------------- training
def test_registered_with_the_trainer():
    assert registry.OBJECTIVES["barlow"] is barlow.barlow_objective
    assert "barlow" in registry.AUGMENTATIONS and registry.MODELS["barlow_resnet18"] is barlow.BarlowTwins
    cfg = training.TrainConfig(dataset="cifar10_synthetic", model={"kind": "barlow_resnet18"}, objective="barlow",
                            augment="barlow", method="rep", lam=0.01, epochs=2, burn_in=1)
    training.validate(cfg)
    model = training.make_model(cfg, None)
    assert isinstance(model, barlow.BarlowTwins) and model.lambd == 0.005


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.slow  # ≈ 24 s on this session's 2-core AVX2 machine: the full default suite must stay under 20 min (issue note)
def test_a_few_barlow_steps_on_the_synthetic_standin(tmp_path, monkeypatch):
    import repspec_utils.defences.transfer  # noqa: F401  (registers 'transfer_cifar10_synthetic': synthetic CIFAR resized)

    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPSPEC_DATA", str(tmp_path / "data"))
    cfg = training.TrainConfig(dataset="transfer_cifar10_synthetic",
                            data_kwargs={"n_train": 48, "n_test": 10, "image_size": 16},
                            model={"kind": "barlow_resnet18"}, objective="barlow", augment="barlow",
                            method="rep", lam=0.01, lr=0.01, batch_size=24, epochs=2, burn_in=1, reg_every=2,
                            reg_epoch_end_step=True, spectral_mode="exact")
    before = training.make_model(cfg, None).state_dict()
    res = training.train(cfg, device="cpu", progress=False)
    assert "SYNTHETIC" in res.data_source
    h = res.history
    assert list(h.phase) == ["burn-in", "rep"] and h.train_loss.notna().all()
    d = 256  # |C_ij| <= 1, so 0 < loss <= 4D + λ D(D − 1)
    assert (h.train_loss > 0).all() and (h.train_loss <= 4 * d + 0.005 * d * (d - 1)).all()
    assert h.penalty.iloc[0] == 0 and h.penalty.iloc[1] > 0
    after = res.model.state_dict()
    assert not torch.equal(before["projector.weight"], after["projector.weight"])
    assert torch.equal(before["backbone.readout.weight"], after["backbone.readout.weight"])  # fc unused in SSL
    # downstream: a logistic-regression readout on the frozen features, as for every other model
    from repspec_utils.evaluation.refit import refit_readout

    train_ds, test_ds = training.load_training_data(cfg)
    refit, acc = refit_readout(res.model, train_ds, test_ds, max_iter=50)  # plumbing only: no need to converge
    assert refit.readout.out_features == 10 and 0 <= acc <= 1
    assert refit(test_ds.x).shape == (10, 10)
