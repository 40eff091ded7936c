"""ResNets with the conv rep-spectral penalty: it lowers σ_max of every penalised conv inside training, the
two-stage ablation touches only stem + stages 1-2, ll-spectral adds the fc, and every padded conv is circular."""

import pytest
import torch
from helpers import conv_matrix
from torch import nn

import repspec_utils.defences.transfer  # noqa: F401  (registers 'transfer_cifar10_synthetic': synthetic CIFAR resized)
from repspec_utils import training
from repspec_utils.method import penalties, spectral
from repspec_utils.models import cifar_resnet18, resnet50_transfer


def _convs(*modules):
    return [m for mod in modules for m in mod.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.slow  # ≈ 45 s on this session's 2-core AVX2 machine: the full default suite must stay under 20 min (issue note)
def test_rep_penalty_in_training_lowers_sigma_of_every_conv(tmp_path, monkeypatch):
    """Burn-in 1 epoch, then 'none' and 'rep' (λ = 10) branch from the same checkpoint for one epoch of 6 steps
    (+ the epoch-end penalty step). A small lr without momentum keeps the task-driven drift of σ tiny, so the
    gap between the twins is the penalty's doing."""
    monkeypatch.setenv("REPSPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("REPSPEC_DATA", str(tmp_path / "data"))
    base = training.TrainConfig(dataset="transfer_cifar10_synthetic",
                             data_kwargs={"n_train": 96, "n_test": 10, "image_size": 16},
                             model={"kind": "cifar_resnet18"}, lr=0.002, momentum=0.0, batch_size=16, epochs=2,
                             burn_in=1, reg_every=1, reg_epoch_end_step=True, eval_every=0)
    twin = training.train(base, device="cpu", progress=False)
    reg = training.train(base.replace(method="rep", lam=10.0), device="cpu", progress=False)
    # both branches start from the same burn-in checkpoint (the second run loads it from the cache)
    assert reg.history.iloc[0].equals(twin.history.iloc[0]) and list(reg.history.phase) == ["burn-in", "rep"]

    def sigmas(model):  # exact σ_max of every weight layer (20 convs of Φ, then fc) at the training resolution
        sizes = spectral.conv_input_sizes(model, torch.zeros(2, 3, 16, 16))
        with torch.no_grad():
            return torch.stack([spectral.conv_sigma(c, sizes[c]) for c in model.feature_layers()]
                               + [torch.linalg.matrix_norm(model.readout.weight, 2)])

    s_reg, s_twin = sigmas(reg.model), sigmas(twin.model)
    assert len(s_reg) == 21
    ratio = s_reg[:20] / s_twin[:20]
    assert (ratio < 0.995).all() and ratio.mean() < 0.97, ratio
    # the unregularised twin's σ hardly moved in its branch epoch (the monitor's per-epoch σ in the history)
    cols = [f"sigma_{j}" for j in range(21)]
    drift = torch.tensor((twin.history[cols].iloc[1] / twin.history[cols].iloc[0]).to_numpy() - 1)
    assert drift.abs().max() < 2e-3 < (1 - ratio).min() * 0.5
    assert abs(s_reg[20] / s_twin[20] - 1) < 5e-3  # rep leaves the fc to the task loss


def _penalised_layers(method, max_layer=None):
    model = cifar_resnet18(seed=0)
    cfg = training.TrainConfig(dataset="cifar10_synthetic", model={"kind": "cifar_resnet18"}, method=method, lam=1.0,
                            max_layer=max_layer, spectral_mode="exact")
    return model, penalties.make_penalty(cfg, model, torch.rand(2, 3, 8, 8))


def test_two_stage_ablation_touches_only_stem_and_stages_1_2():
    model, pen = _penalised_layers("rep", max_layer=2)
    want = [model.conv1, *_convs(model.layer1, model.layer2)]
    assert [id(m) for m in pen.layers] == [id(m) for m in want]
    assert len(want) == 1 + 4 + 5  # stem, 4 convs in stage 1, 4 + the 1x1 downsample in stage 2
    pen.penalty().backward()
    for conv in _convs(model):
        touched = conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
        assert touched == any(conv is m for m in want)
    assert model.readout.weight.grad is None


def test_rep_covers_phi_convs_and_ll_adds_the_fc():
    model, rep = _penalised_layers("rep")
    convs = _convs(model)
    assert [id(m) for m in rep.layers] == [id(m) for m in convs]  # stem + every stage conv incl. downsample
    assert len(convs) == 20 and not any(isinstance(m, (nn.BatchNorm2d, nn.Linear)) for m in rep.layers)
    model, ll = _penalised_layers("ll")
    assert [id(m) for m in ll.layers] == [id(m) for m in [*_convs(model), model.readout]]


@pytest.mark.parametrize("build", [lambda: cifar_resnet18(seed=0), lambda: resnet50_transfer(7, weights=None)])
def test_circular_padding_everywhere(build):
    model = build()
    padded = [m for m in model.modules() if isinstance(m, nn.Conv2d) and any(p > 0 for p in m.padding)]
    assert padded and all(m.padding_mode == "circular" for m in padded)


def test_fft_sigma_of_model_convs_is_their_operator_norm():
    """With circular padding σ_max(conv) from the FFT blocks equals the top singular value of the explicit map."""
    model = cifar_resnet18(seed=0)
    for conv, size in ((model.conv1, 8), (model.layer2[0].conv1, 4), (model.layer2[0].downsample[0], 4)):
        with torch.no_grad():
            want = torch.linalg.matrix_norm(conv_matrix(conv, size, size).double(), ord=2)
            got = spectral.conv_sigma(conv, (size, size)).double()
        assert got.item() == pytest.approx(want.item(), rel=1e-4)


@pytest.mark.parametrize("pad", [(1, 1, 1, 1), (2, 1, 0, 3), (0, 0, 1, 1), (3, 0, 2, 2), (6, 6, 5, 5)])
def test_circular_pad_is_f_pad_circular_bit_for_bit(pad):
    """Values and gradients equal to autograd through F.pad(mode='circular') exactly; double backward works."""
    import torch.nn.functional as F

    from repspec_utils.models.resnet import circular_pad

    g = torch.Generator().manual_seed(sum(pad))
    x = torch.randn(2, 3, 5, 6, generator=g, requires_grad=True)
    out_shape = (2, 3, 5 + pad[2] + pad[3], 6 + pad[0] + pad[1])
    gout = torch.randn(out_shape, generator=g)
    want = F.pad(x, pad, mode="circular")
    got = circular_pad(x, pad)
    assert torch.equal(got, want)
    assert torch.equal(torch.autograd.grad(got, x, gout)[0], torch.autograd.grad(want, x, gout)[0])
    x64 = torch.randn(1, 2, 5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda t: circular_pad(t, pad), (x64,))


def test_circular_pad_refuses_bad_pads():
    from repspec_utils.models.resnet import circular_pad

    x = torch.zeros(1, 1, 4, 5)
    for bad in [(1, 1, 1), (-1, 0, 0, 0), (6, 0, 0, 0), (0, 0, 5, 0)]:
        with pytest.raises(ValueError, match="circular_pad"):
            circular_pad(x, bad)
    with pytest.raises(ValueError, match="4-D"):
        circular_pad(torch.zeros(4, 5), (1, 1, 1, 1))


@pytest.mark.parametrize("build", [lambda: cifar_resnet18(seed=0), lambda: __import__(
    "repspec_utils.models", fromlist=["small_resnet"]).small_resnet(width=4, blocks=1, pad=2, seed=0)])
def test_circular_convs_train_bit_for_bit_as_f_pad_circular(build):
    """Every padded conv is a CircularConv2d; a training step's loss and every gradient equal those of the same net
    whose convs pad through F.pad (plain nn.Conv2d, padding_mode 'circular') exactly."""
    import torch.nn.functional as F

    from repspec_utils.models.resnet import CircularConv2d

    fast, plain = build().train(), build().train()
    padded = [m for m in fast.modules() if isinstance(m, nn.Conv2d) and any(p > 0 for p in m.padding)]
    assert padded and all(type(m) is CircularConv2d and m.padding_mode == "circular" for m in padded)
    for m in plain.modules():
        if type(m) is CircularConv2d:
            m.__class__ = nn.Conv2d
    shape = (6, 3, 16, 16) if hasattr(fast.conv1, "weight") and fast.conv1.in_channels == 3 else (6, 1, 28, 28)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    y = torch.arange(6) % 10
    losses = []
    for net in (fast, plain):
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        losses.append(loss.detach())
    assert torch.equal(*losses)
    for (name, a), b in zip(fast.named_parameters(), plain.parameters()):
        assert torch.equal(a.grad, b.grad), name
