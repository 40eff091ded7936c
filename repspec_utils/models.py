"""Models with an explicit feature map Φ and readout: MLPs, batched MLPs, CIFAR ResNet18 and its scaled-down
form (`small_resnet`, the real-image analogs), transfer ResNet50.

Every model is a `RepModel`: `features(x)` is Φ, `readout` is the final nn.Linear, `forward(x)` is
`readout(features(x))`, and `feature_layers()` lists the weight layers inside Φ (what rep-spectral penalises).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .registry import MODELS

ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,
    "relu": F.relu,
    "tanh": torch.tanh,
    "softplus": F.softplus,
    "identity": lambda z: z,  # a linear "MLP": the reference case with closed-form Δx (tests, bounds)
}


def _gelu_derivative(z: torch.Tensor) -> torch.Tensor:
    """GELU′(z) = Φ(z) + z·ϕ(z) (exact erf GELU), differentiable."""
    return 0.5 * (1 + torch.erf(z / math.sqrt(2))) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


ACTIVATION_DERIVATIVES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": _gelu_derivative,
    "relu": lambda z: (z > 0).to(z.dtype),
    "tanh": lambda z: 1 - torch.tanh(z) ** 2,
    "softplus": torch.sigmoid,
    "identity": torch.ones_like,
}
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# per-channel statistics of the training sets (tests/test_analogs.py recomputes the MNIST-like ones from the data)
IMAGE_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}


def get_activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The elementwise nonlinearity φ called `name` (gelu, relu, tanh, softplus)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def activation_derivative(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """φ′ of the nonlinearity `name`, in closed form (used by the authors' rep-spectral activation term)."""
    get_activation(name)
    return ACTIVATION_DERIVATIVES[name]


class RepModel(nn.Module):
    """F(x) = readout(Φ(x)); subclasses define `features` (Φ) and `feature_layers` (weights inside Φ)."""

    readout: nn.Linear

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Φ(x): (B, *input_shape) -> (B, p)."""
        raise NotImplementedError

    def feature_layers(self, max_layer: int | None = None) -> list[nn.Module]:
        """The Linear/Conv2d layers inside Φ, in forward order (the layers rep-spectral penalises);
        `max_layer` restricts to the first layers (MLP: hidden layers; ResNet: residual stages)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits F(x) = W_L Φ(x) + b_L: (B, *input_shape) -> (B, C)."""
        return self.readout(self.features(x))


class Normalize(nn.Module):
    """Per-channel (x - mean) / std inside the model, so that inputs stay in the [0, 1] box."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BiasScaledLinear(nn.Linear):
    """y = x Wᵀ + s·b with a fixed scale s (the authors' MLP applies 1/√fan_in to a layer's output *bias included*):
    the parameter `bias` stays the raw b (its init, gradient and weight decay act on b, as in the reference code),
    the function sees `effective_bias()` = s·b."""

    def __init__(self, in_features: int, out_features: int, bias_scale: float):
        super().__init__(in_features, out_features)
        self.bias_scale = float(bias_scale)

    def effective_bias(self) -> torch.Tensor:
        """s·b: the bias the layer adds."""
        return self.bias * self.bias_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.effective_bias())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, bias_scale={self.bias_scale:g}"


def effective_bias(layer: nn.Linear) -> torch.Tensor:
    """The bias a Linear layer adds: `bias`, or s·bias for a `BiasScaledLinear`."""
    return layer.effective_bias() if isinstance(layer, BiasScaledLinear) else layer.bias


INITS = ("normal", "torch")  # N(0, init_std²) everywhere (the paper's) | PyTorch's nn.Linear default


def _torch_default_init_(layers: Sequence[nn.Linear], generator: torch.Generator | None) -> None:
    """PyTorch's nn.Linear initialisation, drawn from `generator`: kaiming_uniform_(a=√5) for the weight, which is
    U(−1/√fan_in, 1/√fan_in), and the same uniform for the bias (as nn.Linear.reset_parameters)."""
    with torch.no_grad():
        for layer in layers:
            bound = 1.0 / math.sqrt(layer.in_features)
            for t in (layer.weight, layer.bias):
                t.copy_((torch.rand(t.shape, generator=generator, dtype=t.dtype) * 2 - 1) * bound)


def _normal_init_(tensors: Sequence[torch.Tensor], std: float, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        for t in tensors:
            t.copy_(torch.randn(t.shape, generator=generator, dtype=t.dtype) * std)


class MLP(RepModel):
    """MLP with a_l = φ(W_l a_{l-1} + c_l)/√n_l, Φ = a_{L-1}, F = W_L Φ + c_L; all params N(0, init_std²)
    (init='normal', SPEC §6), or init='torch': PyTorch's nn.Linear default, U(±1/√fan_in) (a labelled deviation,
    for deep nets that do not leave the N(0, 0.01²) saddle).

    bias_scaled=True is the authors' code (SPEC §6, "the reference MLP"): every layer after the first scales its
    output *bias included* by 1/√fan_in, so c_l = b_l/√n_{l-1} for l ≥ 2 (one hidden layer:
    F = (W_2 φ(W_1 x + b_1) + b_2)/√n); bias_scaled=False (repspec's earlier variant) has c_l = b_l. The same
    functions of x for the same effective biases; what differs is how b_l is initialised and learns."""

    def __init__(
        self,
        d_in: int,
        widths: Sequence[int],
        n_classes: int,
        activation: str = "gelu",
        init_std: float = 0.01,
        seed: int | None = None,
        init: str = "normal",
        batchnorm: bool = False,
        bias_scaled: bool = False,
    ):
        super().__init__()
        if not isinstance(bias_scaled, bool):
            raise ValueError(f"bias_scaled must be True or False, got {bias_scaled!r}")
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
        widths = [int(w) for w in ([widths] if isinstance(widths, int) else widths)]
        if d_in <= 0 or n_classes <= 0 or not widths or min(widths) <= 0:
            raise ValueError(f"MLP needs positive sizes, got d_in={d_in}, widths={widths}, n_classes={n_classes}")
        self.d_in, self.widths, self.n_classes, self.activation = d_in, widths, n_classes, activation
        self.act = get_activation(activation)
        dims = [d_in, *widths]
        self.bias_scaled = bias_scaled
        self.hidden = nn.ModuleList(_mlp_layer(a, b, l, bias_scaled) for l, (a, b) in enumerate(zip(dims[:-1], dims[1:])))
        self.readout = _mlp_layer(widths[-1], n_classes, len(widths), bias_scaled)
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.init = init
        if init == "torch":
            _torch_default_init_([*self.hidden, self.readout], gen)
        else:
            _normal_init_(list(self.parameters()), init_std, gen)
        # batchnorm: a BatchNorm1d on every hidden pre-activation, z_l = BN(W_l a_{l-1} + b_l) (an architecture
        # change, e.g. for AR-AT's split BatchNorm on an MLP); created after the draws above, so the Linear layers'
        # initial weights are the same with and without it
        self.batchnorm = bool(batchnorm)
        self.norms = nn.ModuleList(nn.BatchNorm1d(w) for w in widths) if self.batchnorm else None

    def _pre(self, l: int, a: torch.Tensor) -> torch.Tensor:
        z = self.hidden[l](a)
        return self.norms[l](z) if self.norms is not None else z

    def _last_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """φ(z_{L-1}) before its 1/√n_{L-1} scaling: (B, n_{L-1})."""
        a = x.flatten(1)
        for l, layer in enumerate(self.hidden[:-1]):
            a = self.act(self._pre(l, a)) / math.sqrt(layer.out_features)
        return self.act(self._pre(len(self.hidden) - 1, a))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self._last_hidden(x) / math.sqrt(self.widths[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # W_L (φ/√n) + b = (W_L/√n) φ + b: scaling the 10×n readout instead of the B×n activations saves two
        # elementwise passes per step (about 7% of an MNIST step)
        w = self.readout.weight / math.sqrt(self.widths[-1])
        return F.linear(self._last_hidden(x), w, effective_bias(self.readout))

    def raw_features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(z_{L-1}) without the 1/√n: the authors' `feature_map` output, on which their re-fit is trained."""
        return self._last_hidden(x)

    @property
    def feature_scale(self) -> float:
        """Φ = feature_scale · raw_features (1/√n_{L-1})."""
        return 1.0 / math.sqrt(self.widths[-1])

    def feature_layers(self, max_layer: int | None = None) -> list[nn.Module]:
        """The hidden Linear layers, or only the first `max_layer` of them (the layer ablation)."""
        return _first_layers(list(self.hidden), max_layer)

    @torch.no_grad()
    def set_layers(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> "MLP":
        """Copy weights and biases into the layers (hidden layers in order, then the readout); returns self."""
        layers = [*self.hidden, self.readout]
        if len(weights) != len(layers) or len(biases) != len(layers):
            raise ValueError(f"this MLP has {len(layers)} layers, got {len(weights)} weights / {len(biases)} biases")
        for layer, W, b in zip(layers, weights, biases):
            layer.weight.copy_(W)
            layer.bias.copy_(b)
        return self


class BatchedMLP(nn.Module):
    """M independent MLPs with stacked parameters W_l: (M, n_l, n_{l-1}); (B, d) or (M, B, d) -> (M, B, C).

    Member i is initialised exactly as `MLP(..., seed=seeds[i])`, so batched and single training agree.
    Used to train all seeds x methods x settings of the small 2-D experiments as one computation.
    """

    def __init__(
        self,
        seeds: Sequence[int],
        d_in: int,
        widths: Sequence[int],
        n_classes: int,
        activation: str = "gelu",
        init_std: float = 0.01,
        init: str = "normal",
        bias_scaled: bool = False,
    ):
        super().__init__()
        members = [MLP(d_in, widths, n_classes, activation, init_std, seed=s, init=init, bias_scaled=bias_scaled)
                   for s in seeds]
        self.d_in, self.widths, self.n_classes, self.activation = d_in, members[0].widths, n_classes, activation
        self.bias_scaled = bias_scaled
        dims = [d_in, *self.widths]
        # the factor on each layer's bias (MLP's bias_scaled: 1/√fan_in after the first layer)
        self.bias_scales = [1.0 if (l == 0 or not bias_scaled) else 1.0 / math.sqrt(dims[l]) for l in range(len(dims))]
        self.act = get_activation(activation)
        self.n_models = len(members)
        layers = lambda m: [*m.hidden, m.readout]  # noqa: E731
        n_layers = len(layers(members[0]))
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([layers(m)[l].weight.detach() for m in members])) for l in range(n_layers)
        )
        self.biases = nn.ParameterList(
            nn.Parameter(torch.stack([layers(m)[l].bias.detach() for m in members])) for l in range(n_layers)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Φ for every member: (B, d) or (M, B, d) -> (M, B, n_{L-1})."""
        a = x.flatten(-1) if x.dim() == 3 else x
        if a.dim() == 2:
            a = a.unsqueeze(0).expand(self.n_models, -1, -1)
        for W, b, s in zip(self.weights[:-1], self.biases[:-1], self.bias_scales):
            a = self.act(torch.baddbmm(self._bias(b, s), a, W.transpose(1, 2))) / math.sqrt(W.shape[1])
        return a

    @staticmethod
    def _bias(b: torch.Tensor, scale: float) -> torch.Tensor:
        return (b if scale == 1.0 else b * scale).unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        W, b = self.weights[-1], self.biases[-1]
        return torch.baddbmm(self._bias(b, self.bias_scales[-1]), self.features(x), W.transpose(1, 2))

    def forward_with_preacts(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits (M, B, C), the hidden layers' pre-activations z_l (M, B, n_l)): the same function as forward."""
        a = x.flatten(-1) if x.dim() == 3 else x
        if a.dim() == 2:
            a = a.unsqueeze(0).expand(self.n_models, -1, -1)
        preacts = []
        for W, b, s in zip(self.weights[:-1], self.biases[:-1], self.bias_scales):
            z = torch.baddbmm(self._bias(b, s), a, W.transpose(1, 2))
            preacts.append(z)
            a = self.act(z) / math.sqrt(W.shape[1])
        W, b = self.weights[-1], self.biases[-1]
        return torch.baddbmm(self._bias(b, self.bias_scales[-1]), a, W.transpose(1, 2)), preacts

    def member(self, i: int) -> MLP:
        """Model i as a standalone `MLP` (a copy of its parameters)."""
        m = MLP(self.d_in, self.widths, self.n_classes, self.activation,
                bias_scaled=self.bias_scaled).to(self.weights[0].dtype)
        m.set_layers([W[i] for W in self.weights], [b[i] for b in self.biases])
        return m


def _mlp_layer(n_in: int, n_out: int, index: int, bias_scaled: bool) -> nn.Linear:
    """Layer `index` (0 = first) of an MLP: a BiasScaledLinear(1/√n_in) after the first when bias_scaled."""
    if bias_scaled and index > 0:
        return BiasScaledLinear(n_in, n_out, 1.0 / math.sqrt(n_in))
    return nn.Linear(n_in, n_out)


def _first_layers(layers: list[nn.Module], max_layer: int | None) -> list[nn.Module]:
    if max_layer is None:
        return layers
    if not 1 <= int(max_layer) <= len(layers):
        raise ValueError(f"max_layer must be in 1..{len(layers)}, got {max_layer}")
    return layers[: int(max_layer)]


def _resnet_feature_layers(model: nn.Module, n_stages: int, max_stage: int | None) -> list[nn.Module]:
    max_stage = n_stages if max_stage is None else int(max_stage)
    if not 0 <= max_stage <= n_stages:
        raise ValueError(f"max_layer (number of residual stages) must be in 0..{n_stages}, got {max_stage}")
    layers: list[nn.Module] = [model.conv1]
    for s in range(1, max_stage + 1):
        layers += [m for m in getattr(model, f"layer{s}").modules() if isinstance(m, nn.Conv2d)]
    return layers


def set_circular_padding(module: nn.Module) -> nn.Module:
    """Switch every padded Conv2d in `module` to circular padding (makes the FFT σ_max exact)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and any(p > 0 for p in m.padding):
            m.padding_mode = "circular"
    return module


class ResNetRep(RepModel):
    """A torchvision ResNet split into Φ (normalise, stem, stages, pool) and the fc readout."""

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float], circular: bool, pad: int = 0):
        super().__init__()
        self.pad = int(pad)  # zero pixels added on every side inside the model (the analogs: 28 px -> 32 px)
        self.normalize = Normalize(mean, std)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.avgpool = net.avgpool
        self.readout = net.fc
        self.circular = circular
        if circular:
            set_circular_padding(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def feature_layers(self, max_layer: int | None = None) -> list[nn.Module]:
        """Stem conv and every conv (1x1 downsample included) of residual stages 1..max_layer (default all 4)."""
        return _resnet_feature_layers(self, 4, max_layer)


def cifar_resnet18(n_classes: int = 10, circular: bool = True, seed: int | None = None) -> ResNetRep:
    """ResNet18 for 32x32 inputs in [0, 1]: 3x3 stride-1 stem, no max-pool, CIFAR normalisation inside."""
    from torchvision.models.resnet import BasicBlock, ResNet

    if seed is not None:
        torch.manual_seed(seed)
    net = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=n_classes)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    net.maxpool = nn.Identity()
    return ResNetRep(net, CIFAR10_MEAN, CIFAR10_STD, circular)


class _ResNetParts(nn.Module):
    """The attributes of a torchvision ResNet (conv1, bn1, relu, maxpool, layer1..4, avgpool, fc) at any width."""


def check_small_resnet(width: int = 16, blocks: int = 1, channels: int = 1, stats: str = "fashion_mnist",
                       pad: int = 0) -> None:
    """ValueError naming the value unless `small_resnet` can build these sizes; allocates nothing (a too-large net
    is refused by `train.check_memory` from `small_resnet_cost` before it is built)."""
    for name, value, lo, hi in (("width", width, 1, 512), ("blocks", blocks, 1, 16), ("channels", channels, 1, 16),
                                ("pad", pad, 0, 64)):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"small_resnet: {name} must be an integer in {lo}..{hi}, got {value!r}")
    if stats not in IMAGE_STATS:
        raise ValueError(f"small_resnet: stats must be one of {sorted(IMAGE_STATS)}, got {stats!r}")
    if len(IMAGE_STATS[stats][0]) != channels:
        raise ValueError(f"small_resnet: stats {stats!r} are for {len(IMAGE_STATS[stats][0])}-channel images, "
                         f"channels is {channels}")


def small_resnet(width: int = 16, blocks: int = 1, channels: int = 1, n_classes: int = 10,
                 stats: str = "fashion_mnist", circular: bool = True, seed: int | None = None,
                 pad: int = 0) -> ResNetRep:
    """The CIFAR ResNet18's structure scaled down: a 3×3 stride-1 stem (no max-pool), four stages of `blocks`
    torchvision BasicBlocks with widths width·(1, 2, 4, 8) and strides (1, 2, 2, 2) (1×1 downsample where the shape
    changes), BatchNorm, global average pooling and an fc readout; torchvision's initialisation (Kaiming-normal
    fan_out convs, BatchNorm 1 / 0). width=64, blocks=2, channels=3 is ResNet18's architecture. `stats` names
    the normalisation applied inside the model (IMAGE_STATS: 'fashion_mnist', 'mnist', 'cifar10', 'imagenet'), so
    inputs stay in [0, 1]; circular padding makes every conv's σ_max exact by FFT. `pad`: black pixels added on every
    side inside the model, before the stem (28-px MNIST-like images -> 32 px, so that every stride-2 conv sees an
    even size, which the FFT σ of a strided circular conv needs; the attacks still perturb the 28-px image only)."""
    from torchvision.models.resnet import BasicBlock

    check_small_resnet(width, blocks, channels, stats, pad)
    mean, std = IMAGE_STATS[stats]
    if seed is not None:
        torch.manual_seed(seed)
    net = _ResNetParts()
    net.conv1 = nn.Conv2d(channels, width, kernel_size=3, stride=1, padding=1, bias=False)
    net.bn1, net.relu, net.maxpool = nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.Identity()
    inplanes = width
    for stage, (mult, stride) in enumerate(zip((1, 2, 4, 8), (1, 2, 2, 2)), start=1):
        planes = width * mult
        stage_blocks = []
        for b in range(blocks):
            s = stride if b == 0 else 1
            down = None
            if s != 1 or inplanes != planes:
                down = nn.Sequential(nn.Conv2d(inplanes, planes, kernel_size=1, stride=s, bias=False),
                                     nn.BatchNorm2d(planes))
            stage_blocks.append(BasicBlock(inplanes, planes, stride=s, downsample=down))
            inplanes = planes
        setattr(net, f"layer{stage}", nn.Sequential(*stage_blocks))
    net.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    net.fc = nn.Linear(inplanes, n_classes)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return ResNetRep(net, mean, std, circular, pad=pad)


def small_resnet_cost(width: int, blocks: int, channels: int = 1, image_size: int = 28,
                      n_classes: int = 10, pad: int = 0) -> dict[str, int]:
    """Exact sizes of `small_resnet(width, blocks, channels, pad=pad)` on image_size-px inputs, layer by layer:
    'params' (weights, BatchNorm affine, fc), 'forward_macs' (multiply-adds of the convs and the fc per image) and
    'activation_floats' (every conv, BatchNorm and residual output kept for the backward pass, per image)."""
    size, params, macs, acts = int(image_size) + 2 * int(pad), 0, 0, 0

    def conv(c_in, c_out, k, stride, size):
        out = (size + 2 * (k // 2) - k) // stride + 1
        return out, c_in * c_out * k * k + 2 * c_out, out * out * c_out * c_in * k * k, 2 * out * out * c_out

    size, p, m, a = conv(channels, width, 3, 1, size)
    params, macs, acts = params + p, macs + m, acts + a
    inplanes = width
    for mult, stride in zip((1, 2, 4, 8), (1, 2, 2, 2)):
        planes = width * mult
        for b in range(blocks):
            s = stride if b == 0 else 1
            s_in = size
            size, p1, m1, a1 = conv(inplanes, planes, 3, s, s_in)
            _, p2, m2, a2 = conv(planes, planes, 3, 1, size)
            params, macs, acts = params + p1 + p2, macs + m1 + m2, acts + a1 + a2 + size * size * planes
            if s != 1 or inplanes != planes:
                _, p3, m3, a3 = conv(inplanes, planes, 1, s, s_in)
                params, macs, acts = params + p3, macs + m3, acts + a3
            inplanes = planes
    params += inplanes * n_classes + n_classes
    macs += inplanes * n_classes
    return {"params": params, "forward_macs": macs, "activation_floats": acts}


def resnet50_transfer(
    n_classes: int,
    weights: str | Path | None = "IMAGENET1K_V2",
    circular: bool = True,
    head_init_std: float = 1.0,
    seed: int | None = None,
) -> ResNetRep:
    """torchvision ResNet50 (ImageNet weights by name via the weights API, a local checkpoint path, or None)
    with a new fc head of `n_classes` initialised N(0, head_init_std²) and ImageNet normalisation inside."""
    from torchvision.models import ResNet50_Weights, resnet50

    if seed is not None:
        torch.manual_seed(seed)
    if weights is None:
        net = resnet50(weights=None)
    elif isinstance(weights, Path) or (isinstance(weights, str) and Path(weights).suffix in {".pt", ".pth"}):
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(
                f"ResNet50 checkpoint not found at {path}. Pass weights='IMAGENET1K_V2' to download it with "
                "torchvision's weights API (needs internet), or a path to a saved resnet50 state_dict."
            )
        net = resnet50(weights=None)
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    else:
        net = resnet50(weights=ResNet50_Weights[str(weights)])
    net.fc = nn.Linear(net.fc.in_features, n_classes)
    nn.init.normal_(net.fc.weight, std=head_init_std)
    nn.init.zeros_(net.fc.bias)
    return ResNetRep(net, IMAGENET_MEAN, IMAGENET_STD, circular)


class RefitModel(RepModel):
    """A frozen feature map Φ of another model with a new linear readout (readout re-training)."""

    def __init__(self, base: RepModel, readout: nn.Linear):
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.readout = readout

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.features(x)

    def feature_layers(self, max_layer: int | None = None) -> list[nn.Module]:
        return self.base.feature_layers(max_layer)


MODELS.register("mlp", MLP, sized_by_data=True)  # d_in and n_classes default to the training data's
MODELS.register("cifar_resnet18", cifar_resnet18)
MODELS.register("small_resnet", small_resnet)
MODELS.register("resnet50_transfer", resnet50_transfer)


def build_model(spec: dict) -> RepModel:
    """A model from a plain dict (the form stored in cache keys and profiles): registry.MODELS[spec['kind']]
    called with the other entries, e.g. {'kind': 'mlp', 'd_in': 784, 'widths': [2000], 'n_classes': 10, 'seed': 0}."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    return MODELS.lookup(kind)(**spec)
