"""ResNets with the `RepModel` split: the CIFAR ResNet18 (circular padding so each conv's σ_max is exact by FFT),
its scaled-down form `small_resnet` (the real-image analogs), and the transfer ResNet50."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from repspec_utils.infra.registry import MODELS
from repspec_utils.models.base import IMAGENET_MEAN, IMAGENET_STD, Normalize, RepModel
from repspec_utils.models.mlp import MLP

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)


CIFAR10_STD = (0.2470, 0.2435, 0.2616)


# per-channel statistics of the training sets (tests/test_analogs.py recomputes the MNIST-like ones from the data)
IMAGE_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (CIFAR10_MEAN, CIFAR10_STD),
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
}


def _resnet_feature_layers(model: nn.Module, n_stages: int, max_stage: int | None) -> list[nn.Module]:
    max_stage = n_stages if max_stage is None else int(max_stage)
    if not 0 <= max_stage <= n_stages:
        raise ValueError(f"max_layer (number of residual stages) must be in 0..{n_stages}, got {max_stage}")
    layers: list[nn.Module] = [model.conv1]
    for s in range(1, max_stage + 1):
        layers += [m for m in getattr(model, f"layer{s}").modules() if isinstance(m, nn.Conv2d)]
    return layers


class _CircularPad(torch.autograd.Function):
    """Circular (wrap-around) padding of the last two dims, pad = (left, right, top, bottom), each ≤ that dim's size.

    The forward is `F.pad(x, pad, mode="circular")`'s: copy x into the middle, then the left / right columns, then the
    top / bottom rows (which carry the corners) from the padded tensor itself. The backward undoes those copies in
    reverse order on one copy of the gradient: each wrapped strip's gradient is added to the strip it was copied from
    and zeroed. Autograd through F.pad does the same additions in the same order, so the gradient is bit for bit the
    same (tested), but it builds every step as a full-size zero tensor plus a full-size sum: on the analogs' small
    ResNet the F.pad step costs ≈ 1.13× this one (benchmarks/bench_conv.py, GUIDE). Its own backward is made of differentiable
    operations, so double backward works too."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, pad: tuple[int, int, int, int]) -> torch.Tensor:
        left, right, top, bottom = pad
        h, w = x.shape[-2], x.shape[-1]
        hp, wp = h + top + bottom, w + left + right
        out = x.new_empty((*x.shape[:-2], hp, wp))
        out[..., top:top + h, left:left + w] = x
        if left:
            out[..., :, :left] = out[..., :, wp - left - right:wp - right]
        if right:
            out[..., :, wp - right:] = out[..., :, left:left + right]
        if top:
            out[..., :top, :] = out[..., hp - top - bottom:hp - bottom, :]
        if bottom:
            out[..., hp - bottom:, :] = out[..., top:top + bottom, :]
        ctx.pad = (left, right, top, bottom)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        left, right, top, bottom = ctx.pad
        g = grad.clone()
        hp, wp = g.shape[-2], g.shape[-1]
        if bottom:
            g[..., top:top + bottom, :] += g[..., hp - bottom:, :]
            g[..., hp - bottom:, :] = 0
        if top:
            g[..., hp - top - bottom:hp - bottom, :] += g[..., :top, :]
            g[..., :top, :] = 0
        if right:
            g[..., :, left:left + right] += g[..., :, wp - right:]
            g[..., :, wp - right:] = 0
        if left:
            g[..., :, wp - left - right:wp - right] += g[..., :, :left]
            g[..., :, :left] = 0
        return g[..., top:hp - bottom, left:wp - right].contiguous(), None


def circular_pad(x: torch.Tensor, pad: Sequence[int]) -> torch.Tensor:
    """`F.pad(x, pad, mode="circular")` for 4-D x and pad = (left, right, top, bottom) ≥ 0 (each at most the size it
    wraps), with the same values and bit-identical gradients, and a cheaper backward (`_CircularPad`)."""
    pad = tuple(int(p) for p in pad)
    if x.dim() != 4 or len(pad) != 4 or min(pad) < 0 or max(pad[:2]) > x.shape[-1] or max(pad[2:]) > x.shape[-2]:
        raise ValueError(f"circular_pad needs a 4-D input and 0 <= (left, right) <= width, 0 <= (top, bottom) <= "
                         f"height; got input {tuple(x.shape)} and pad {pad}")
    return _CircularPad.apply(x, pad)


class CircularConv2d(nn.Conv2d):
    """nn.Conv2d whose padding_mode 'circular' pads with `circular_pad` (same output, same gradients, faster backward).
    `set_circular_padding` turns a model's padded convs into this class in place (their parameters stay the same
    objects, and the state_dict the same keys)."""

    def _conv_forward(self, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.padding_mode != "circular":
            return super()._conv_forward(input, weight, bias)
        return F.conv2d(circular_pad(input, self._reversed_padding_repeated_twice), weight, bias, self.stride,
                        (0, 0), self.dilation, self.groups)


def set_circular_padding(module: nn.Module) -> nn.Module:
    """Switch every padded Conv2d in `module` to circular padding (makes the FFT σ_max exact), computed by
    `CircularConv2d` (a plain nn.Conv2d changes class in place; a subclass keeps its own forward and gets
    padding_mode 'circular', as before)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d) and any(p > 0 for p in m.padding):
            m.padding_mode = "circular"
            if type(m) is nn.Conv2d:
                m.__class__ = CircularConv2d
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
    is refused by `training.check_memory` from `small_resnet_cost` before it is built)."""
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


MODELS.register("mlp", MLP, sized_by_data=True)  # d_in and n_classes default to the training data's


MODELS.register("cifar_resnet18", cifar_resnet18)


MODELS.register("small_resnet", small_resnet)


MODELS.register("resnet50_transfer", resnet50_transfer)
