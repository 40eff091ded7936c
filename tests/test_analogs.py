"""The real-image analogs of Figs 6–8 (issue 27): the small ResNet (structure, exact sizes, exact conv σ, the
padding inside the model), the 28-px augmentations and grayscale Barlow views against torchvision, the conv
recipes on Fashion-MNIST / MNIST and their bad input."""

import pytest
import torch
from helpers import conv_matrix
from torch import nn
from torchvision.transforms.v2 import functional as TF

from repspec_utils import training
from repspec_utils.data import DataMissingError, get_data
from repspec_utils.defences import barlow
from repspec_utils.experiments import recipes
from repspec_utils.infra import parameters, registry
from repspec_utils.method import spectral
from repspec_utils.models import IMAGE_STATS, cifar_resnet18, small_resnet, small_resnet_cost


def _convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


# ------------------------------------------------------------------------------------------------- model
def test_small_resnet_at_64_2_is_resnet18s_architecture():
    small, ref = small_resnet(64, 2, 3, stats="cifar10", seed=0), cifar_resnet18(seed=0)
    assert {k: v.shape for k, v in small.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    assert [(c.stride, c.padding, c.padding_mode) for c in _convs(small)] == \
        [(c.stride, c.padding, c.padding_mode) for c in _convs(ref)]
    x = torch.rand(2, 3, 16, 16)
    small.load_state_dict(ref.state_dict())
    small.eval(), ref.eval()
    torch.testing.assert_close(small(x), ref(x))  # same weights, same function


@pytest.mark.parametrize("width, blocks, pad", [(8, 1, 2), (16, 1, 2), (4, 2, 0)])
def test_small_resnet_cost_counts_what_runs(width, blocks, pad):
    """params against the model's tensors; multiply-adds against forward hooks on every conv and the fc."""
    model = small_resnet(width, blocks, pad=pad, seed=0).eval()
    cost = small_resnet_cost(width, blocks, 1, 28, pad=pad)
    assert cost["params"] == sum(p.numel() for p in model.parameters())
    macs = []
    hooks = [c.register_forward_hook(lambda m, i, o: macs.append(
        o[0].numel() * m.in_channels * m.kernel_size[0] * m.kernel_size[1])) for c in _convs(model)]
    model(torch.rand(1, 1, 28, 28))
    for h in hooks:
        h.remove()
    assert cost["forward_macs"] == sum(macs) + model.readout.weight.numel()


def test_layers_stage_ablation_and_circular_padding():
    model = small_resnet(8, 1, pad=2, seed=0)
    convs = _convs(model)
    # stem, stage 1 (two convs, no downsample: the width does not change), stages 2-4 (two convs + a 1x1 each)
    assert model.feature_layers() == convs and len(convs) == 1 + 2 + 3 * 3
    assert model.feature_layers(2) == convs[:6] and model.feature_layers(0) == convs[:1]
    with pytest.raises(ValueError, match="0..4"):
        model.feature_layers(5)
    assert all(c.padding_mode == "circular" for c in convs if c.padding != (0, 0))
    assert model.readout not in model.feature_layers()


def test_padding_inside_the_model_is_black_pixels_before_normalisation():
    model = small_resnet(4, 1, pad=2, seed=0).eval()
    x = torch.rand(3, 1, 28, 28)
    seen = []
    h = model.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    model(x)
    h.remove()
    mean, std = IMAGE_STATS["fashion_mnist"]
    assert seen[0].shape == (3, 1, 32, 32)
    torch.testing.assert_close(seen[0][:, :, 2:-2, 2:-2], (x - mean[0]) / std[0])
    border = seen[0].clone()
    border[:, :, 2:-2, 2:-2] = (0 - mean[0]) / std[0]
    torch.testing.assert_close(border, torch.full_like(border, (0 - mean[0]) / std[0]))


def test_fft_sigma_of_the_analog_convs_is_their_operator_norm():
    """At the sizes the padded 28-px input gives each conv (32, 16, 8, 4), σ_max from the FFT equals the top
    singular value of the conv's explicit matrix, strided and 1x1 convs included."""
    model = small_resnet(4, 1, pad=2, seed=0)
    sizes = spectral.conv_input_sizes(model, torch.zeros(2, 1, 28, 28))
    picks = [model.conv1, model.layer2[0].conv1, model.layer3[0].downsample[0], model.layer4[0].conv2]
    for conv in picks:
        h, w = sizes[conv][-2:]
        with torch.no_grad():
            want = torch.linalg.matrix_norm(conv_matrix(conv, h, w).double(), ord=2)
            got = spectral.conv_sigma(conv, (h, w)).double()
        assert got.item() == pytest.approx(want.item(), rel=1e-4)


def test_image_stats_are_the_training_sets():
    for name in ("mnist", "fashion_mnist"):
        try:
            train_set, _ = get_data(name, flatten=False)
        except DataMissingError:
            pytest.skip(f"{name} is not installed here (bash scripts/fetch_data.sh)")
        mean, std = IMAGE_STATS[name]
        assert train_set.x.mean().item() == pytest.approx(mean[0], abs=1e-3)
        assert train_set.x.std().item() == pytest.approx(std[0], abs=1e-3)


@pytest.mark.parametrize("kwargs, match", [
    ({"width": 0}, "width"), ({"blocks": 17}, "blocks"), ({"width": 2.5}, "width"), ({"pad": -1}, "pad"),
    ({"stats": "svhn"}, "stats"), ({"stats": "cifar10"}, "3-channel"),
])
def test_small_resnet_refuses_bad_sizes(kwargs, match):
    with pytest.raises(ValueError, match=match):
        small_resnet(**kwargs)


def test_a_backbone_too_large_for_memory_is_refused_before_allocation():
    cfg = recipes.cifar_configs("fashion_mnist", methods=["none"], seeds=[0], image_size=28, width=512, blocks=16,
                                batch_size=10**6)[0]
    fake = type("DS", (), {"x": torch.zeros(1, 1, 28, 28), "n_classes": 10})()
    with pytest.raises(ValueError, match="small ResNet .* needs about .* GiB"):
        training.make_model(cfg, fake)


# ---------------------------------------------------------------------------------------- augmentations
def _crop_by_loops(x, pad, oy, ox, flips):
    out = torch.empty_like(x)
    xp = torch.nn.functional.pad(x, (pad,) * 4)
    h, w = x.shape[-2:]
    for i in range(len(x)):
        img = xp[i, :, oy[i]:oy[i] + h, ox[i]:ox[i] + w]
        out[i] = img.flip(-1) if flips[i] else img
    return out


@pytest.mark.parametrize("name, pad, flip", [("cifar", 4, True), ("crop_flip", 2, True), ("crop", 2, False)])
def test_random_crop_augmentations_against_a_loop(name, pad, flip):
    x = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    got = registry.AUGMENTATIONS[name](x, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    oy = torch.randint(0, 2 * pad + 1, (64,), generator=g)
    ox = torch.randint(0, 2 * pad + 1, (64,), generator=g)
    flips = (torch.rand(64, generator=g) < 0.5) if flip else torch.zeros(64, dtype=torch.bool)
    assert torch.equal(got, _crop_by_loops(x, pad, oy, ox, flips))
    assert 0 < int(flips.sum()) < 64 if flip else True


def test_grayscale_kernels_match_torchvision():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 1, 28, 28, generator=g)
    f = torch.tensor([0.6, 0.9, 1.0, 1.2, 1.4, 0.75])
    for mine, theirs in ((barlow.adjust_brightness, TF.adjust_brightness), (barlow.adjust_contrast, TF.adjust_contrast)):
        want = torch.stack([theirs(x[i], float(f[i])) for i in range(6)])
        torch.testing.assert_close(mine(x, f), want, rtol=0, atol=1e-5)
    sig = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.3])
    want = torch.stack([TF.gaussian_blur(x[i], [3, 3], [float(sig[i])] * 2) for i in range(6)])
    torch.testing.assert_close(barlow.gaussian_blur(x, sig, 3), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("impl", ["batched", "torchvision"])
def test_grayscale_views_are_seeded_per_image_and_in_the_box(impl):
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(2)).expand(8, -1, -1, -1).contiguous()
    a1, a2 = barlow.barlow_views(x, torch.Generator().manual_seed(5), impl)
    b1, _ = barlow.barlow_views(x, torch.Generator().manual_seed(5), impl)
    assert torch.equal(a1, b1) and not torch.equal(a1, a2)
    assert a1.shape == (8, 1, 28, 28) and a1.min() >= 0 and a1.max() <= 1
    assert len({tuple(v.flatten()[:64].tolist()) for v in a1}) == 8


def test_rgb_view_specs_are_refused_on_one_channel():
    with pytest.raises(ValueError, match="GRAY_VIEW"):
        barlow.augment_view(torch.rand(2, 1, 28, 28), barlow.VIEW1, torch.Generator().manual_seed(0))
    assert barlow.GRAY_VIEW1.jitter[2:] == (0.0, 0.0) and barlow.GRAY_VIEW1.scale == (0.25, 1.0)


def test_barlow_on_the_small_backbone_takes_a_step():
    cfg = recipes.barlow_configs("fashion_mnist", seeds=[0], image_size=28, width=4, blocks=1, epochs=2,
                                 burn_in=1)[0]
    training.validate(cfg)
    model = training.make_model(cfg, None)
    assert cfg.model == {"kind": "barlow_twins",
                         "backbone": {"width": 4, "blocks": 1, "channels": 1, "stats": "fashion_mnist", "pad": 2}}
    loss, feats, _ = barlow.barlow_objective(model, torch.rand(16, 1, 28, 28), None, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and feats.shape == (16, 32)
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- recipes
def test_conv_recipes_on_the_analogs():
    fm = recipes.cifar_configs("fashion_mnist", seeds=[0, 1], image_size=28, width=16, blocks=1, n_train=1000,
                               weight_decays=[1e-4])
    assert {c.augment for c in fm} == {"none"} and {c.dataset for c in fm} == {"fashion_mnist"}  # SPEC §6
    assert fm[0].model == {"kind": "small_resnet", "width": 16, "blocks": 1, "channels": 1, "stats": "fashion_mnist",
                           "pad": 2}
    assert fm[0].data_kwargs == {"flatten": False} and fm[0].n_train == 1000
    assert sorted({(c.method, c.max_layer) for c in fm}, key=str) == \
        sorted({("none", None), ("ll", None), ("rep", None), ("rep", 2)}, key=str)
    mn = recipes.cifar_configs("mnist", seeds=[0], image_size=28, width=8, blocks=1)
    assert {c.augment for c in mn} == {"none"}
    # the paper's ResNet18 keeps its key: CIFAR at width 64 / 2 blocks is still 'cifar_resnet18'
    assert recipes.cifar_configs("cifar10", seeds=[0])[0].model == {"kind": "cifar_resnet18"}
    assert recipes.analog_label("fashion_mnist").startswith("REAL-IMAGE ANALOG (Fashion-MNIST, small ResNet)")
    assert recipes.analog_label("cifar10") == ""


@pytest.mark.parametrize("kwargs, match", [
    ({"dataset": "svhn"}, "dataset must be one of"),
    ({"dataset": "fashion_mnist", "image_size": 32}, "28-px"),
    ({"dataset": "fashion_mnist", "n_test": 500}, "n_test must be 0"),
    ({"dataset": "fashion_mnist", "max_layers": [None, 5]}, "0..4"),
    ({"dataset": "fashion_mnist", "width": 0}, "width"),
])
def test_conv_recipes_refuse_bad_input(kwargs, match):
    kwargs = {"image_size": 28, **kwargs} if kwargs.get("dataset") != "svhn" else kwargs
    with pytest.raises(ValueError, match=match):
        recipes.cifar_configs(seeds=[0], **kwargs)


def test_an_analog_not_installed_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("REPSPEC_DATA", str(tmp_path))
    cfg = recipes.cifar_configs("fashion_mnist", methods=["none"], seeds=[0], image_size=28, width=4, blocks=1)[0]
    with pytest.raises(DataMissingError, match="fetch_data|prepare_fashion_mnist"):
        recipes.load_training_data(cfg)


def test_notebook_parameters_refuse_bad_analog_settings():
    with pytest.raises(ValueError, match="dataset"):
        parameters.check_value("dataset", "svhn", notebook="fig6_cifar_resnet")
    parameters.check_value("dataset", "fashion_mnist", notebook="fig7_barlow")
    with pytest.raises(ValueError, match="dataset"):
        parameters.check_value("dataset", "fashion_mnist", notebook="baselines_cifar")
    with pytest.raises(ValueError, match="base_width"):
        parameters.check_value("base_width", 0)
    with pytest.raises(ValueError, match="28-px"):
        parameters.check_relations({"dataset": "fashion_mnist", "image_size": 16})
    with pytest.raises(ValueError, match="n_test must be 0"):
        parameters.check_relations({"dataset": "mnist", "n_test": 100})


def test_augmentation_override_and_bad_name():
    fm = recipes.cifar_configs("fashion_mnist", seeds=[0], image_size=28, width=8, blocks=1, weight_decays=[1e-4],
                               augment="crop_flip")
    assert {c.augment for c in fm} == {"crop_flip"}
    with pytest.raises(ValueError, match="unknown augmentation 'crops'"):
        recipes.cifar_configs("fashion_mnist", seeds=[0], image_size=28, width=8, blocks=1, augment="crops")
