"""Barlow Twins self-supervised learning on CIFAR-10 (SPEC §6): model, loss, the two augmentation pipelines.

- `BarlowTwins`: a `cifar_resnet18` feature map Φ plus a projector Linear 512→256 (no bias) followed by
  BatchNorm1d(256, affine=False). Φ, `feature_layers` and `readout` (the backbone's fc, unused in pretraining,
  refit on frozen features downstream) are the backbone's, so rep-spectral and the attacks treat it like
  every other `RepModel`.
- `barlow_loss`: Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij² with C = z1ᵀ z2 / B on batch-standardised projections.
- Views: two asymmetric pipelines at the input's size, 32 px for CIFAR (`VIEW1`, `VIEW2`): RandomResizedCrop,
  horizontal flip, ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale p 0.2, Gaussian blur (kernel 3, σ in
  [0.1, 2], the 224-px recipe's 23-px kernel scaled to 32 px) p 1.0 / 0.1, solarize p 0.0 / 0.2.
  torchvision's v2 transforms draw one set of random parameters per call, so a batch tensor would get the
  same crop / jitter / blur for every image, which is wrong for SSL. `augment_view` therefore draws
  per-image parameters (with torchvision's distributions) and applies batched tensor kernels that reproduce
  torchvision's functional kernels (tests compare them image by image). `augment_view_torchvision` is the
  reference path: torchvision.transforms.v2 applied image by image in a loop (slow).
- Seeding: `augment_view` draws every random number from the `torch.Generator` it is given (the trainer's
  per-epoch generator), so the same generator state gives the same views. torchvision transforms use the
  global RNG, so the reference path forks the global RNG (`torch.random.fork_rng`) and seeds it with a
  number drawn from the generator; the caller's global RNG state is left untouched.

This module registers the objective 'barlow', the augmentation 'barlow' and the model kind 'barlow_resnet18'
(and 'barlow_twins', the same class for a `backbone` spec)
in `registry`. A config then reads, e.g.
TrainConfig(dataset='cifar10', model={'kind': 'barlow_resnet18'}, objective='barlow', augment='barlow', ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from repspec_utils.infra.registry import AUGMENTATIONS, MODELS, OBJECTIVES
from repspec_utils.models.base import RepModel
from repspec_utils.models.resnet import cifar_resnet18, small_resnet

__all__ = ["BarlowTwins", "barlow_loss", "standardize", "ViewSpec", "VIEW1", "VIEW2", "augment_view",
           "augment_view_torchvision", "torchvision_view", "barlow_views", "barlow_objective"]


# ------------------------------------------------------------------------------------------------- model
@MODELS.register("barlow_resnet18")
class BarlowTwins(RepModel):
    """Barlow Twins on a CIFAR ResNet18: Φ = backbone features (B, 512); project(x) = BN(P Φ(x)) (B, 256).
    `backbone`: a `models.small_resnet` spec instead (e.g. {'width': 16, 'blocks': 1, 'channels': 1,
    'stats': 'fashion_mnist'}, the real-image analog); one-channel inputs get the grayscale views."""

    def __init__(self, n_classes: int = 10, proj_dim: int = 256, lambd: float = 0.005, circular: bool = True,
                 augment: str = "batched", seed: int | None = None, backbone: dict | None = None):
        super().__init__()
        if augment not in ("batched", "torchvision"):
            raise ValueError(f"augment must be 'batched' or 'torchvision', got {augment!r}")
        if backbone is None:
            self.backbone = cifar_resnet18(n_classes=n_classes, circular=circular, seed=seed)
        else:
            self.backbone = small_resnet(**backbone, n_classes=n_classes, circular=circular, seed=seed)
        p = self.backbone.readout.in_features
        self.projector = nn.Linear(p, proj_dim, bias=False)
        self.bn = nn.BatchNorm1d(proj_dim, affine=False)
        self.lambd, self.augment = float(lambd), augment

    @property
    def readout(self) -> nn.Linear:  # the backbone's fc: unused in pretraining, refit downstream
        return self.backbone.readout

    def features(self, x: Tensor) -> Tensor:
        """Φ(x): (B, 3, H, W) in [0, 1] -> (B, 512)."""
        return self.backbone.features(x)

    def feature_layers(self, max_layer: int | None = None) -> list[nn.Module]:
        """The backbone's stem conv and residual-stage convs (stages 1..max_layer); projector excluded."""
        return self.backbone.feature_layers(max_layer)

    def project(self, x: Tensor) -> Tensor:
        """Batch-standardised projections BN(P Φ(x)): (B, 3, H, W) -> (B, proj_dim)."""
        return self.bn(self.projector(self.features(x)))


MODELS.register("barlow_twins", BarlowTwins)  # the same class; the name for a small_resnet backbone (real-image analogs)


# -------------------------------------------------------------------------------------------------- loss
def standardize(z: Tensor, eps: float = 1e-5) -> Tensor:
    """(z − mean) / √(var + eps) over the batch, biased var: what BatchNorm1d(affine=False) does in training."""
    return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)


def barlow_loss(z1: Tensor, z2: Tensor, lambd: float = 0.005) -> Tensor:
    """Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij², C = z1ᵀ z2 / B, for batch-standardised projections z1, z2 (B, D)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"z1 and z2 must both be (B, D), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    c = z1.T @ z2 / z1.shape[0]
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = c.pow(2).sum() - torch.diagonal(c).pow(2).sum()
    return on_diag + lambd * off_diag


# ------------------------------------------------------------------------------------------------- views
@dataclass(frozen=True)
class ViewSpec:
    """One Barlow Twins augmentation pipeline (the order is the one listed)."""

    size: int | None = None  # output side; None: the input's height (32 px for CIFAR-10)
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: float = 1.0
    blur_kernel: int = 3  # 23 px at 224 (≈ 10% of the image) scaled to 32 px
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5


VIEW1 = ViewSpec(blur_p=1.0, solarize_p=0.0)
VIEW2 = ViewSpec(blur_p=0.1, solarize_p=0.2)
# 28-px grayscale (Fashion-MNIST, the real-image analog): crops keep ≥ 25 % of the image (8 % of 28 px is a
# 7-px patch, too little to name a garment), flips (valid for garments), brightness / contrast jitter only
# (saturation and hue do not exist in one channel, nor does grayscale), blur and solarize as the RGB pipeline
GRAY_VIEW1 = ViewSpec(scale=(0.25, 1.0), jitter=(0.4, 0.4, 0.0, 0.0), gray_p=0.0, blur_p=1.0, solarize_p=0.0)
GRAY_VIEW2 = ViewSpec(scale=(0.25, 1.0), jitter=(0.4, 0.4, 0.0, 0.0), gray_p=0.0, blur_p=0.1, solarize_p=0.2)


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)


def crop_params(n: int, height: int, width: int, scale, ratio, gen: torch.Generator) -> Tensor:
    """Per-image RandomResizedCrop boxes (top, left, h, w), int64 (n, 4), torchvision's sampling rule:
    up to 10 tries of area ~ U(scale)·HW and log-aspect ~ U(log ratio), else the clamped central crop."""
    area = height * width
    tries = 10
    target = area * _uniform(n * tries, *scale, gen).view(n, tries)
    log_r = _uniform(n * tries, math.log(ratio[0]), math.log(ratio[1]), gen).view(n, tries)
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.long().argmax(1)  # first valid try (0 if none, then overridden below)
    w, h = w.gather(1, first[:, None])[:, 0], h.gather(1, first[:, None])[:, 0]
    u_top, u_left = torch.rand(n, generator=gen, dtype=torch.float64), torch.rand(n, generator=gen, dtype=torch.float64)
    top = torch.floor(u_top * (height - h + 1)).long()
    left = torch.floor(u_left * (width - w + 1)).long()
    # fallback: the central crop with the aspect ratio clamped into `ratio`
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fh, fw = height, int(round(height * max(ratio)))
    else:
        fw, fh = width, height
    bad = ~ok.any(1)
    h, w = torch.where(bad, fh, h), torch.where(bad, fw, w)
    top, left = torch.where(bad, (height - fh) // 2, top), torch.where(bad, (width - fw) // 2, left)
    return torch.stack([top, left, h, w], 1)


def resized_crop(x: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Crop box (top, left, h, w) of each image and resize it bilinearly to size×size: (B, C, H, W) -> (B, C, s, s).

    Equals torchvision's resized_crop (bilinear, align_corners=False) for crops no larger than the output
    (upsampling, where antialiasing does nothing); source coordinates are clamped to the crop like interpolate.
    """
    b, _, height, width = x.shape
    boxes = boxes.to(x.device, torch.float64)
    top, left, h, w = boxes.unbind(1)
    i = torch.arange(size, device=x.device, dtype=torch.float64) + 0.5
    ys = top[:, None] + torch.minimum(torch.clamp(i * (h[:, None] / size) - 0.5, min=0), h[:, None] - 1)
    xs = left[:, None] + torch.minimum(torch.clamp(i * (w[:, None] / size) - 0.5, min=0), w[:, None] - 1)
    gy = (2 * ys + 1) / height - 1  # grid_sample's pixel-centre convention (align_corners=False)
    gx = (2 * xs + 1) / width - 1
    grid = torch.stack([gx[:, None, :].expand(b, size, size), gy[:, :, None].expand(b, size, size)], -1)
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode="border", align_corners=False)


def grayscale(x: Tensor) -> Tensor:
    """ITU-R 601 luma 0.2989 R + 0.587 G + 0.114 B: (B, 3, H, W) -> (B, 1, H, W); one channel is its own."""
    if x.shape[1] == 1:
        return x
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    return (ratio.view(-1, 1, 1, 1) * a + (1 - ratio.view(-1, 1, 1, 1)) * b).clamp(0, 1)


def adjust_brightness(x: Tensor, f: Tensor) -> Tensor:
    """x·f clamped to [0, 1], one factor per image: (B, C, H, W), (B,)."""
    return (x * f.view(-1, 1, 1, 1)).clamp(0, 1)


def adjust_contrast(x: Tensor, f: Tensor) -> Tensor:
    """Blend with the mean gray level of each image by factor f (B,)."""
    return _blend(x, grayscale(x).mean((1, 2, 3), keepdim=True), f)


def adjust_saturation(x: Tensor, f: Tensor) -> Tensor:
    """Blend with each image's grayscale by factor f (B,)."""
    return _blend(x, grayscale(x), f)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    r, g, b = x.unbind(1)
    maxc, minc = x.amax(1), x.amin(1)
    delta = maxc - minc
    flat = delta == 0
    s = delta / torch.where(flat, torch.ones_like(maxc), maxc)
    d = torch.where(flat, torch.ones_like(delta), delta)
    h = torch.where(maxc == r, (g - b) / d, torch.where(maxc == g, 2 + (b - r) / d, 4 + (r - g) / d))
    h = torch.where(flat, torch.zeros_like(h), h)
    return torch.stack([torch.remainder(h / 6, 1.0), s, maxc], 1)


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    # channel n in (R, G, B) = (5, 3, 1): v − v·s·clamp(min(k, 4 − k), 0, 1) with k = (n + 6h) mod 6
    h, s, v = hsv[:, 0:1], hsv[:, 1:2], hsv[:, 2:3]
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype, device=hsv.device).view(1, 3, 1, 1)
    k = n + 6 * h  # in [1, 11) for h in [0, 1)
    k = torch.where(k >= 6, k - 6, k)
    return v - v * s * torch.minimum(k, 4 - k).clamp(0, 1)


def adjust_hue(x: Tensor, f: Tensor) -> Tensor:
    """Rotate the hue by f (B,) turns in [−0.5, 0.5] (HSV round trip, as torchvision)."""
    hsv = _rgb_to_hsv(x)
    h = hsv[:, 0] + f.view(-1, 1, 1)  # in [−0.5, 1.5): wrap into [0, 1)
    h = h - torch.floor(h)
    return _hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], 1))


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Separable Gaussian blur with one σ per image (B,), reflect padding, as torchvision's gaussian_blur."""
    b, c, height, width = x.shape
    r = kernel_size // 2
    t = torch.arange(kernel_size, dtype=x.dtype, device=x.device) - r
    k = torch.softmax(-(t[None, :] ** 2) / (2 * sigma.to(x).view(-1, 1) ** 2), dim=1)  # (B, k), sums to 1
    k = k.repeat_interleave(c, 0)  # one kernel per (image, channel)
    y = F.pad(x.reshape(1, b * c, height, width), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = F.conv2d(y, k.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, height, width)


def _where(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    return torch.where(mask.view(-1, 1, 1, 1).to(a.device), a, b)


def augment_view(x: Tensor, spec: ViewSpec, gen: torch.Generator) -> Tensor:
    """One Barlow view of every image with its own random parameters: (B, 3, H, W) in [0, 1] -> (B, 3, s, s),
    s = spec.size or H.

    All randomness comes from `gen` (same state, same views). Batched tensor ops; no global RNG."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected RGB or grayscale images (B, 3 or 1, H, W), got {tuple(x.shape)}")
    if x.shape[1] == 1 and (spec.jitter[2] or spec.jitter[3] or spec.gray_p):
        raise ValueError("a grayscale view cannot jitter saturation or hue or convert to grayscale: use GRAY_VIEW1 / "
                         "GRAY_VIEW2 (saturation = hue = 0, gray_p = 0)")
    n = x.shape[0]
    coin = lambda p: torch.rand(n, generator=gen) < p  # noqa: E731
    size = spec.size or x.shape[2]
    x = resized_crop(x, crop_params(n, x.shape[2], x.shape[3], spec.scale, spec.ratio, gen), size)
    x = _where(coin(spec.flip_p), x.flip(-1), x)
    # colour jitter: factors ~ U[1 − a, 1 + a] (hue U[−a, a]), the four ops in a random order per image
    bri, con, sat, hue = spec.jitter
    apply = coin(spec.jitter_p)
    factors = [_uniform(n, max(0.0, 1 - bri), 1 + bri, gen), _uniform(n, max(0.0, 1 - con), 1 + con, gen),
               _uniform(n, max(0.0, 1 - sat), 1 + sat, gen), _uniform(n, -hue, hue, gen)]
    order = torch.rand(n, 4, generator=gen).argsort(1)
    ops = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]
    skip = {2, 3} if x.shape[1] == 1 else set()  # no saturation / hue in one channel (their jitter is 0)
    for step in range(4):  # x is a fresh tensor here (made by resized_crop), so in-place row updates are safe
        for j, op in enumerate(ops):
            if j in skip:
                continue
            m = apply & (order[:, step] == j)
            if m.any():
                x[m.to(x.device)] = op(x[m.to(x.device)], factors[j][m].to(x))
    x = _where(coin(spec.gray_p), grayscale(x).expand_as(x), x)
    blur, sigma = coin(spec.blur_p), _uniform(n, *spec.blur_sigma, gen)
    if blur.any():
        x[blur.to(x.device)] = gaussian_blur(x[blur.to(x.device)], sigma[blur], spec.blur_kernel)
    sol = coin(spec.solarize_p)
    x = _where(sol, torch.where(x >= spec.solarize_threshold, 1 - x, x), x)
    return x.clamp(0, 1)


def torchvision_view(spec: ViewSpec, size: int = 32):
    """The same pipeline as torchvision.transforms.v2 transforms (one image per call; global RNG)."""
    from torchvision.transforms import v2

    return v2.Compose([
        v2.RandomResizedCrop(spec.size or size, scale=spec.scale, ratio=spec.ratio, antialias=True),
        v2.RandomHorizontalFlip(spec.flip_p),
        v2.RandomApply([v2.ColorJitter(*spec.jitter)], p=spec.jitter_p),
        v2.RandomGrayscale(spec.gray_p),
        v2.RandomApply([v2.GaussianBlur(spec.blur_kernel, sigma=spec.blur_sigma)], p=spec.blur_p),
        v2.RandomSolarize(spec.solarize_threshold, p=spec.solarize_p),
    ])


def augment_view_torchvision(x: Tensor, spec: ViewSpec, gen: torch.Generator) -> Tensor:
    """Reference path: torchvision v2 transforms image by image: (B, 3, H, W) -> (B, 3, s, s).

    torchvision draws from the global RNG, so it runs inside `torch.random.fork_rng` seeded with a number
    drawn from `gen`: seeded by `gen`, and the caller's global RNG state is unchanged."""
    pipeline = torchvision_view(spec, x.shape[2])
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.stack([pipeline(img) for img in x]).clamp(0, 1)


def barlow_views(x: Tensor, gen: torch.Generator, impl: str = "batched") -> tuple[Tensor, Tensor]:
    """The two asymmetric views (VIEW1: blur always, no solarize; VIEW2: blur 0.1, solarize 0.2); one-channel
    images get GRAY_VIEW1 / GRAY_VIEW2."""
    fn = {"batched": augment_view, "torchvision": augment_view_torchvision}[impl]
    v1, v2 = (GRAY_VIEW1, GRAY_VIEW2) if x.shape[1] == 1 else (VIEW1, VIEW2)
    return fn(x, v1, gen), fn(x, v2, gen)


# ---------------------------------------------------------------------------------------- trainer hooks
@OBJECTIVES.register("barlow")
def barlow_objective(model: BarlowTwins, x: Tensor, y: Tensor, gen: torch.Generator):
    """Barlow Twins loss on two views of the batch x (labels unused): returns (loss, Φ(view 1), 0)."""
    v1, v2 = barlow_views(x, gen, getattr(model, "augment", "batched"))
    f1 = model.features(v1)
    z1 = model.bn(model.projector(f1))
    z2 = model.project(v2)
    return barlow_loss(z1, z2, getattr(model, "lambd", 0.005)), f1, 0


@AUGMENTATIONS.register("barlow")
def barlow_augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """The batch unchanged: the 'barlow' objective makes the two views itself."""
    return x
