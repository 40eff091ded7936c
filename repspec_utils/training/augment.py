"""Batched, seeded input augmentations, registered in `AUGMENTATIONS`: 'none', 'cifar' (pad-4 crop + flip),
'crop_flip' and 'crop' (pad-2, for 28-px images)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from repspec_utils.infra.registry import AUGMENTATIONS


@AUGMENTATIONS.register("none")
def no_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The batch unchanged."""
    return x


def random_crop(x: torch.Tensor, gen: torch.Generator, pad: int, flip: bool) -> torch.Tensor:
    """RandomCrop(size of x, padding=pad, fill 0), then a horizontal flip with probability 1/2 when `flip`, on a
    (B, C, H, W) batch as one tensor op (the offsets are drawn before the flips, from `gen`)."""
    b, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    ox = torch.randint(0, 2 * pad + 1, (b,), generator=gen).to(x.device)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    cols = ox[:, None] + torch.arange(w, device=x.device)
    if flip:
        flips = (torch.rand(b, generator=gen) < 0.5).to(x.device)
        cols = torch.where(flips[:, None], cols.flip(1), cols)
    out = xp.permute(0, 2, 3, 1)[torch.arange(b, device=x.device)[:, None, None], rows, cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


@AUGMENTATIONS.register("cifar")
def cifar_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(32, padding=4, fill 0) + horizontal flip (SPEC §6's CIFAR-10 augmentation)."""
    return random_crop(x, gen, pad=4, flip=True)


@AUGMENTATIONS.register("crop_flip")
def crop_flip_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(padding=2) + horizontal flip: the CIFAR augmentation scaled to 28-px Fashion-MNIST (garments
    stay garments when mirrored; 2 px of 28 is CIFAR's 4 of 32 rounded down)."""
    return random_crop(x, gen, pad=2, flip=True)


@AUGMENTATIONS.register("crop")
def crop_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """RandomCrop(padding=2) without flips: for MNIST digits, which a mirror does not preserve."""
    return random_crop(x, gen, pad=2, flip=False)
