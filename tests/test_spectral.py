"""σ_max of Linear and circular Conv2d layers against explicit matrices; power iteration, gradients, checkpoints."""

import pytest
import torch
from helpers import conv_matrix
from torch import nn

from repspec_utils.method.spectral import (
    SpectralPenalty,
    conv_block_at,
    conv_blocks,
    conv_input_sizes,
    conv_sigma,
    conv_sigma_exact,
    linear_sigma,
    linear_sigma_exact,
    power_iteration,
    power_iteration_converged,
    spectral_layers,
    top_right_singular_vectors,
)

torch.set_num_threads(1)
DT = torch.float64


def rel(a, b):
    a, b = float(torch.as_tensor(a).detach()), float(torch.as_tensor(b).detach())
    return abs(a - b) / abs(b)


def circular_conv(c_in, c_out, k, stride, seed=0):
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False, padding_mode="circular")
    return conv.to(DT)


# ------------------------------------------------------------------------------------------------------- linear


@pytest.mark.parametrize("shape", [(7, 5), (5, 9), (40, 40)])
def test_linear_sigma_exact_and_power_match_svd(shape):
    W = torch.randn(shape, dtype=DT, generator=torch.Generator().manual_seed(1))
    ref = torch.linalg.svdvals(W)[0]
    assert rel(linear_sigma_exact(W), ref) < 1e-12
    assert rel(linear_sigma(W, exact=False), ref) < 1e-6


def test_linear_sigma_rank_deficient_and_stacked():
    g = torch.Generator().manual_seed(2)
    low_rank = torch.randn(30, 2, dtype=DT, generator=g) @ torch.randn(2, 20, dtype=DT, generator=g)
    assert rel(linear_sigma_exact(low_rank), torch.linalg.svdvals(low_rank)[0]) < 1e-12
    assert rel(linear_sigma(low_rank, exact=False), torch.linalg.svdvals(low_rank)[0]) < 1e-6

    stacked = torch.randn(4, 12, 8, dtype=DT, generator=g)
    ref = torch.linalg.svdvals(stacked)[:, 0]
    assert linear_sigma_exact(stacked).shape == (4,)
    torch.testing.assert_close(linear_sigma_exact(stacked), ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(linear_sigma(stacked, exact=False), ref, rtol=1e-6, atol=0)


def test_top_right_singular_vectors_exact():
    g = torch.Generator().manual_seed(4)
    for shape in [(3, 9, 5), (3, 5, 9)]:
        W = torch.randn(shape, dtype=torch.complex128, generator=g)
        v = top_right_singular_vectors(W)
        torch.testing.assert_close(torch.linalg.vector_norm(W @ v.unsqueeze(-1), dim=(-2, -1)),
                                   torch.linalg.svdvals(W)[:, 0], rtol=1e-12, atol=0)
    assert torch.equal(top_right_singular_vectors(torch.zeros(1, 2, 3)), torch.tensor([[1.0, 0.0, 0.0]]))


def test_zero_weights_do_not_kill_the_persistent_vector():
    lin = nn.Linear(6, 4, bias=False).to(DT)
    nn.init.zeros_(lin.weight)
    pen = SpectralPenalty([lin])
    assert float(pen.penalty().detach()) == 0.0
    with torch.no_grad():
        lin.weight.copy_(torch.randn(4, 6, dtype=DT, generator=torch.Generator().manual_seed(0)))
    for _ in range(200):
        pen.penalty()
    assert rel(pen.sigmas()[0], torch.linalg.svdvals(lin.weight)[0]) < 1e-6


def test_power_iteration_vectors_are_singular_vectors():
    W = torch.randn(4, 15, 10, dtype=DT, generator=torch.Generator().manual_seed(3))
    u, v, steps = power_iteration_converged(W, tol=1e-10, max_iter=5000)
    assert steps < 5000
    sigma = torch.linalg.svdvals(W)[:, :1]
    torch.testing.assert_close((W @ v.unsqueeze(-1)).squeeze(-1), sigma * u, rtol=0, atol=1e-4)
    u2, v2 = power_iteration(W, v, n_iter=3)  # a fixed point
    torch.testing.assert_close(v2, v, rtol=0, atol=1e-4)
    torch.testing.assert_close(u2, u, rtol=0, atol=1e-4)


# --------------------------------------------------------------------------------------------------------- conv


@pytest.mark.parametrize("k", [3, 1])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(4, 4), (6, 8), (8, 8), (8, 6)])
def test_conv_sigma_exact_matches_explicit_operator(k, stride, size):
    conv = circular_conv(3, 5, k, stride, seed=10 * k + stride)
    ref = torch.linalg.svdvals(conv_matrix(conv, *size))[0]
    assert rel(conv_sigma_exact(conv.weight, size, stride), ref) < 1e-10
    assert rel(conv_sigma(conv, size, exact=True), ref) < 1e-10
    assert rel(conv_sigma(conv, size, exact=False), ref) < 1e-4
    # the penalty's dispatch (1×1 convs as channel matrices) gives the same values
    pen = SpectralPenalty([conv], {conv: size})
    assert rel(pen.sigmas()[0], ref) < 1e-4
    assert rel(SpectralPenalty([conv], {conv: size}, mode="exact").sigmas()[0], ref) < 1e-10


def test_stride2_polyphase_is_needed():
    """The stride-2 operator's σ differs clearly from the stride-1 one: ignoring the stride would be caught."""
    conv = circular_conv(2, 3, 3, stride=2, seed=5)
    size = (6, 8)
    ref = torch.linalg.svdvals(conv_matrix(conv, *size))[0]
    assert rel(conv_sigma_exact(conv.weight, size, 2), ref) < 1e-10
    assert rel(conv_sigma_exact(conv.weight, size, 1), ref) > 1e-2
    blocks = conv_blocks(conv.weight, size, 2)
    assert blocks.shape == (3 * (4 // 2 + 1), 3, 2 * 4)  # (h/2)·((w/2)//2 + 1) frequencies, c_in·s² columns


def test_conv_non_square_kernel_and_stride():
    torch.manual_seed(13)
    conv = nn.Conv2d(3, 4, (3, 1), stride=(2, 1), padding=(1, 0), bias=False, padding_mode="circular").to(DT)
    ref = torch.linalg.svdvals(conv_matrix(conv, 6, 5))[0]
    assert rel(conv_sigma(conv, (6, 5)), ref) < 1e-10
    assert rel(SpectralPenalty([conv], {conv: (6, 5)}).sigmas()[0], ref) < 1e-6


def test_conv_kernel_larger_than_input_wraps():
    conv = circular_conv(2, 3, 5, stride=1, seed=6)  # 5×5 kernel, padding 2, on a 3×4 torus
    ref = torch.linalg.svdvals(conv_matrix(conv, 3, 4))[0]
    assert rel(conv_sigma_exact(conv.weight, (3, 4), 1), ref) < 1e-10


@pytest.mark.parametrize("k, stride, size", [(3, 1, (6, 4)), (3, 2, (4, 6)), (1, 2, (4, 4)), (5, 1, (3, 4))])
def test_conv_block_at_matches_fft_blocks(k, stride, size):
    conv = circular_conv(3, 2, k, stride, seed=k + stride)
    blocks = conv_blocks(conv.weight, size, stride)
    direct = torch.stack([conv_block_at(conv.weight, size, stride, f) for f in range(len(blocks))])
    torch.testing.assert_close(direct, blocks, rtol=0, atol=1e-12)


def test_conv_exact_gradient_matches_explicit_matrix():
    conv = circular_conv(3, 4, 3, stride=2, seed=7)
    size = (4, 6)
    w_ref = conv.weight.detach().clone().requires_grad_()
    (torch.linalg.matrix_norm(conv_matrix(conv, *size, weight=w_ref), ord=2) ** 2).backward()
    w_fft = conv.weight.detach().clone().requires_grad_()
    (conv_sigma_exact(w_fft, size, 2) ** 2).backward()  # through the FFT of every block
    torch.testing.assert_close(w_fft.grad, w_ref.grad, rtol=1e-6, atol=1e-9)
    SpectralPenalty([conv], {conv: size}, mode="exact").penalty().backward()  # through the top block only
    torch.testing.assert_close(conv.weight.grad, w_ref.grad, rtol=1e-6, atol=1e-9)


def test_power_penalty_gradient_matches_exact_linear():
    torch.manual_seed(0)
    lin = nn.Linear(9, 6).to(DT)
    pen_power = SpectralPenalty([lin], mode="power", tol=1e-12, max_iter=5000)
    pen_power.penalty().backward()
    g_power = lin.weight.grad.clone()
    lin.zero_grad()
    SpectralPenalty([lin], mode="exact").penalty().backward()
    torch.testing.assert_close(g_power, lin.weight.grad, rtol=1e-5, atol=1e-8)
    assert lin.bias.grad is None


@pytest.mark.parametrize("stride", [1, 2])
def test_power_penalty_gradient_matches_exact_conv(stride):
    conv = circular_conv(3, 4, 3, stride=stride, seed=8)
    sizes = {conv: (6, 4)}
    pen_power = SpectralPenalty([conv], sizes, mode="power", tol=1e-12, max_iter=5000)
    value = pen_power.penalty()
    value.backward()
    g_power = conv.weight.grad.clone()
    conv.zero_grad()
    exact = SpectralPenalty([conv], sizes, mode="exact").penalty()
    exact.backward()
    assert rel(value, exact) < 1e-9
    torch.testing.assert_close(g_power, conv.weight.grad, rtol=1e-5, atol=1e-8)


def test_persistent_power_iteration_tracks_exact_sigma_during_training():
    """One iteration per step keeps up with weights that move ~0.1% per SGD step (50 steps, ~5% in all).

    (Away from crossings of the top singular values: at a crossing no 1-step tracker can follow at once.)
    """
    torch.manual_seed(0)
    conv = circular_conv(4, 6, 3, stride=2, seed=9)
    lin = nn.Linear(20, 12).to(DT)
    with torch.no_grad():  # a spectral gap that the drift does not close
        lin.weight.add_(torch.outer(torch.randn(12, dtype=DT), torch.randn(20, dtype=DT)) / 8)
    sizes = {conv: (6, 8)}
    pen = SpectralPenalty([conv, lin], sizes, n_iter=1)
    params = [conv.weight, lin.weight]
    drift = [torch.randn_like(p).detach() for p in params]
    drift = [d * 1e-3 * p.detach().norm() / d.norm() for d, p in zip(drift, params)]  # with lr = 1
    opt = torch.optim.SGD(params, lr=1.0)
    start = SpectralPenalty([conv, lin], sizes, mode="exact").sigmas()
    for _ in range(50):
        opt.zero_grad()
        loss = 1e-3 * pen.penalty() + sum((p * d).sum() for p, d in zip(params, drift))
        loss.backward()
        opt.step()
        exact = SpectralPenalty([conv, lin], sizes, mode="exact").sigmas()
        torch.testing.assert_close(pen.sigmas(), exact, rtol=1e-3, atol=0)
    assert ((exact - start).abs() / start).min() > 5e-3  # the weights did move


# ------------------------------------------------------------------------------------------------------ penalty


def test_state_dict_round_trip_resumes_identically():
    conv, lin = circular_conv(2, 3, 3, stride=2, seed=11), nn.Linear(5, 4).to(DT)
    sizes = {conv: (4, 4)}
    a = SpectralPenalty([conv, lin], sizes)
    a.penalty()
    state = a.state_dict()
    assert set(state) == {"v.0", "v.1"} and state["v.0"].is_complex()
    with torch.no_grad():
        conv.weight.mul_(1.01)
    b = SpectralPenalty([conv, lin], sizes, seed=123)
    b.load_state_dict(state)
    assert torch.equal(a.penalty(), b.penalty())
    assert torch.equal(a.penalty(), b.penalty())
    with pytest.raises(ValueError):
        b.load_state_dict({"v.0": state["v.1"]})
    with pytest.raises(ValueError):
        b.load_state_dict({"v.7": state["v.1"]})


def test_sigmas_has_no_side_effects():
    lin = nn.Linear(6, 5).to(DT)
    pen = SpectralPenalty([lin])
    before = pen.sigmas()
    assert pen.state_dict() == {}
    pen.penalty()
    v = pen.state_dict()["v.0"]
    pen.sigmas()
    assert torch.equal(pen.state_dict()["v.0"], v)
    assert rel(before[0], torch.linalg.svdvals(lin.weight)[0]) < 1e-6


def test_stacked_weights_per_model():
    g = torch.Generator().manual_seed(12)
    W1 = nn.Parameter(torch.randn(3, 8, 2, dtype=DT, generator=g))
    W2 = nn.Parameter(torch.randn(3, 2, 8, dtype=DT, generator=g))
    pen = SpectralPenalty([W1, W2])
    per_model = pen.penalty_per_model()
    assert per_model.shape == (3, 2)
    ref = torch.stack([torch.linalg.svdvals(W1)[:, 0], torch.linalg.svdvals(W2)[:, 0]], dim=-1) ** 2
    torch.testing.assert_close(per_model, ref, rtol=1e-5, atol=0)
    assert pen.sigmas().shape == (3, 2)
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])  # rep, ll, none
    (per_model * mask).sum().backward()
    assert W1.grad[2].abs().max() == 0 and W2.grad[0].abs().max() == 0 and W2.grad[1].abs().max() > 0
    with pytest.raises(ValueError):
        SpectralPenalty([W1, nn.Linear(2, 2)])
    with pytest.raises(ValueError):
        SpectralPenalty([nn.Linear(2, 2)]).penalty_per_model()


def test_invalid_layers_raise():
    with pytest.raises(ValueError, match="grouped"):
        SpectralPenalty([nn.Conv2d(4, 4, 3, padding=1, groups=2)], {})
    with pytest.raises(ValueError, match="dilat"):
        SpectralPenalty([nn.Conv2d(4, 4, 3, padding=2, dilation=2)], {})
    conv = nn.Conv2d(4, 4, 3, padding=1)
    with pytest.raises(ValueError, match="input size"):
        SpectralPenalty([conv], {})
    strided = nn.Conv2d(4, 4, 3, stride=2, padding=1)
    with pytest.raises(ValueError, match="divisible"):
        SpectralPenalty([strided], {strided: (5, 6)})
    with pytest.raises(ValueError, match="mode"):
        SpectralPenalty([], mode="svd")
    assert float(SpectralPenalty([]).penalty()) == 0.0


class TinyResNetLike(nn.Module):
    """Stem conv, two 'stages' (one with a strided 1×1 downsample), a readout: the RepModel interface."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False, padding_mode="circular")
        self.bn = nn.BatchNorm2d(4)
        self.stage1 = nn.Conv2d(4, 4, 3, padding=1, bias=False, padding_mode="circular")
        self.stage2 = nn.ModuleList(
            [nn.Conv2d(4, 8, 3, stride=2, padding=1, bias=False, padding_mode="circular"), nn.Conv2d(4, 8, 1, stride=2)]
        )
        self.readout = nn.Linear(8, 2)

    def features(self, x):
        x = self.stage1(torch.relu(self.bn(self.conv1(x))))
        x = self.stage2[0](x) + self.stage2[1](x)
        return x.mean(dim=(2, 3))

    def forward(self, x):
        return self.readout(self.features(x))

    def feature_layers(self, max_layer=None):
        stages = [[self.stage1], list(self.stage2)]
        return [self.conv1] + [m for s in stages[: 2 if max_layer is None else max_layer] for m in s]


def test_spectral_layers_and_conv_input_sizes():
    model = TinyResNetLike().train()
    assert spectral_layers(model, "none") == []
    assert spectral_layers(model, "rep") == model.feature_layers()
    assert spectral_layers(model, "ll") == model.feature_layers() + [model.readout]
    assert spectral_layers(model, "rep", max_layer=1) == [model.conv1, model.stage1]
    with pytest.raises(ValueError, match="rep"):
        spectral_layers(model, "spectral")

    running_mean = model.bn.running_mean.clone()
    sizes = conv_input_sizes(model, torch.rand(2, 3, 8, 6))
    assert model.training and model.bn.training and torch.equal(model.bn.running_mean, running_mean)
    assert sizes[model.conv1] == (8, 6) and sizes[model.stage2[0]] == (8, 6) and len(sizes) == 4

    model.double()
    sigmas = SpectralPenalty(spectral_layers(model, "ll"), sizes, mode="exact").sigmas()
    assert sigmas.shape == (5,)
    for layer, sigma in zip(spectral_layers(model, "rep"), sigmas):  # each conv against its explicit operator
        with torch.no_grad():
            ref = torch.linalg.svdvals(conv_matrix(layer, *sizes[layer], weight=layer.weight))[0]
        assert rel(sigma, ref) < 1e-10
    assert rel(sigmas[4], torch.linalg.svdvals(model.readout.weight)[0]) < 1e-12


def test_spectral_layers_on_an_mlp():
    class MLPLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden = nn.ModuleList([nn.Linear(2, 8), nn.Linear(8, 8), nn.Linear(8, 8)])
            self.readout = nn.Linear(8, 2)

        def feature_layers(self, max_layer=None):
            return list(self.hidden)[:max_layer]

    model = MLPLike()
    assert spectral_layers(model, "rep", max_layer=2) == list(model.hidden[:2])
    pen = SpectralPenalty(spectral_layers(model, "ll"))
    expected = sum(torch.linalg.svdvals(m.weight)[0] ** 2 for m in [*model.hidden, model.readout])
    assert rel(pen.penalty(), expected) < 1e-5


def test_cifar_resnet18_layers_and_penalty():
    """Integration with models.cifar_resnet18 (on 8×8 inputs to stay fast): layer lists, sizes, power vs exact."""
    models = pytest.importorskip("repspec_utils.models")
    model = models.cifar_resnet18(seed=0)
    sizes = conv_input_sizes(model, torch.rand(1, 3, 8, 8))
    assert len(spectral_layers(model, "rep")) == 20 and len(spectral_layers(model, "rep", max_layer=2)) == 10
    assert spectral_layers(model, "ll")[-1] is model.readout
    layers = spectral_layers(model, "ll")
    exact = SpectralPenalty(layers, sizes, mode="exact").sigmas()
    power = SpectralPenalty(layers, sizes)
    power.penalty().backward()
    torch.testing.assert_close(power.sigmas(), exact, rtol=1e-4, atol=0)
    assert all(layer.weight.grad is not None for layer in layers)
    assert model.bn1.weight.grad is None


def test_accumulate_grad_equals_autograd_of_the_penalty():
    """The fused in-place gradient is the one `(scale * penalty()).backward()` gives, with the same value and the
    same power-iteration state, for a Linear, a 1×1 conv and stacked weights, on top of an existing .grad."""
    torch.manual_seed(0)
    linear = nn.Linear(7, 5).double()
    conv1 = nn.Conv2d(3, 4, 1, stride=2).double()
    stacked = nn.Parameter(torch.randn(3, 6, 4, dtype=torch.float64))
    for layers, params in (([linear, conv1], [linear.weight, conv1.weight]), ([stacked], [stacked])):
        _check_accumulate_grad(layers, params)
    linear.weight.grad = None  # a weight without a gradient yet gets one
    SpectralPenalty([linear]).accumulate_grad(1.0)
    assert linear.weight.grad is not None and linear.weight.grad.abs().sum() > 0


def _check_accumulate_grad(layers, params, scale=0.37):
    via_autograd, fused = SpectralPenalty(layers, seed=3), SpectralPenalty(layers, seed=3)
    assert fused.direct_grad
    for _ in range(3):  # several steps: the stored vectors advance alike
        base = [torch.randn_like(p) for p in params]
        for p, b in zip(params, base):
            p.grad = b.clone()
        value = via_autograd.penalty()
        (scale * value).backward()
        want = [p.grad.clone() for p in params]
        for p, b in zip(params, base):
            p.grad = b.clone()
        got = fused.accumulate_grad(scale)
        torch.testing.assert_close(got, value.detach(), rtol=1e-13, atol=0)
        for g, w, b in zip([p.grad for p in params], want, base):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-13)
            assert not torch.allclose(g, b)  # the penalty's gradient really was added
        for a, b in zip(via_autograd.state_dict().values(), fused.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        with torch.no_grad():
            for p in params:
                p.sub_(0.1 * p.grad)


def test_accumulate_grad_refuses_convs_and_exact_mode():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    pen = SpectralPenalty([conv], input_shapes={conv: (6, 6)})
    assert not pen.direct_grad
    with pytest.raises(ValueError, match="accumulate_grad"):
        pen.accumulate_grad(1.0)
    assert not SpectralPenalty([nn.Linear(3, 3)], mode="exact").direct_grad
