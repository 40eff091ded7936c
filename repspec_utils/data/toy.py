"""The generated 2-D problems (box [-2, 2], deterministic given the seed) and scikit-learn's 8×8 digits."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from repspec_utils.infra.registry import DATASETS

from .core import ArrayDataset

_TOY_BOX = (-2.0, 2.0)
_XOR_CORNERS = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])


def _xor_label(x: Tensor) -> Tensor:
    return (x[:, 0] * x[:, 1] < 0).long()


def make_xor() -> ArrayDataset:
    """Clean XOR: the 4 points (±1, ±1), x (4, 2), y = 1 iff x1*x2 < 0; box [-2, 2]."""
    x = _XOR_CORNERS.clone()
    return ArrayDataset(
        x=x, y=_xor_label(x), name="xor",
        source="generated: clean XOR, 4 points (±1, ±1), y = 1 iff x1*x2 < 0 (SPEC §6)",
        box=_TOY_BOX, n_classes=2)


def make_xor_noisy(seed: int = 0, n_per_corner: int = 20, std: float = 0.2) -> ArrayDataset:
    """Noisy XOR: n_per_corner Gaussian points (std) around each corner, x (4n, 2), label of the corner."""
    g = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(4, n_per_corner, 2, generator=g) * std
    x = (_XOR_CORNERS[:, None, :] + noise).reshape(-1, 2)
    y = _xor_label(_XOR_CORNERS).repeat_interleave(n_per_corner)
    x = x.clamp(*_TOY_BOX)  # a no-op in practice (5 std from the corners); keeps the box contract
    return ArrayDataset(
        x=x, y=y, name="xor_noisy",
        source=(f"generated: noisy XOR, {n_per_corner} N(corner, {std}²) points per corner of (±1, ±1), "
                f"labelled by corner with y = 1 iff x1*x2 < 0, seed {seed} (SPEC §6)"),
        box=_TOY_BOX, n_classes=2)


def sin_label(x: Tensor) -> Tensor:
    """Label of the sin-boundary problem: y = [x2 > 0.6 sin(7 x1 - 1)], int64 (N,)."""
    return (x[:, 1] > 0.6 * torch.sin(7.0 * x[:, 0] - 1.0)).long()


def make_sin(seed: int = 0, n: int = 1600, train_frac: float = 0.5) -> tuple[ArrayDataset, ArrayDataset]:
    """Sin boundary: n uniform points in [-1, 1]², y = [x2 > 0.6 sin(7 x1 - 1)], seeded train/test split."""
    g = torch.Generator().manual_seed(int(seed))
    x = torch.rand(n, 2, generator=g) * 2.0 - 1.0
    y = sin_label(x)
    perm = torch.randperm(n, generator=g)
    n_train = int(round(train_frac * n))
    src = (f"generated: sin boundary, {n} uniform points in [-1, 1]², y = [x2 > 0.6 sin(7 x1 - 1)], "
           f"seed {seed}, {{split}} split {n_train}/{n - n_train} (SPEC §6)")
    full = ArrayDataset(x=x, y=y, name="sin", source=src, box=_TOY_BOX, n_classes=2)
    train, test = full.subset(perm[:n_train]), full.subset(perm[n_train:])
    train.source, test.source = src.format(split="train"), src.format(split="test")
    return train, test


def make_digits(seed: int = 0, test_frac: float = 0.25, flatten: bool = True) -> tuple[ArrayDataset, ArrayDataset]:
    """scikit-learn's real 8×8 digits in [0, 1], x (N, 64) or (N, 1, 8, 8), seeded stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)
    x = x.reshape(len(x), -1) if flatten else x[:, None]
    y = torch.from_numpy(d.target.astype(np.int64))
    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=test_frac, random_state=int(seed),
                                      stratify=d.target)
    src = f"real: scikit-learn load_digits (8×8, /16 -> [0, 1]), seeded stratified split (seed {seed}, {{split}})"
    full = ArrayDataset(x=x, y=y, name="digits", source=src, box=(0.0, 1.0), n_classes=10)
    train, test = full.subset(np.sort(idx_tr)), full.subset(np.sort(idx_te))
    train.source, test.source = src.format(split="train"), src.format(split="test")
    return train, test


# ----------------------------------------------------------------------------------------------------


@DATASETS.register("xor", kind="toy")
def load_xor():
    """'xor': the 4 points (±1, ±1), y = 1 iff x1·x2 < 0 ((-1,-1) -> 0, (-1,1) -> 1, (1,-1) -> 1, (1,1) -> 0);
    the test set is the training set."""
    ds = make_xor()
    return ds, ds


@DATASETS.register("xor_noisy", kind="toy")
def load_xor_noisy(seed: int = 0):
    """'xor_noisy': 20 N(corner, 0.2²) points per corner, 80 in all, labelled by their corner; test = train."""
    ds = make_xor_noisy(seed=seed)
    return ds, ds


@DATASETS.register("sin", kind="toy")
def load_sin(seed: int = 0):
    """'sin': 1600 uniform points in [-1, 1]², y = [x2 > 0.6 sin(7 x1 - 1)], seeded 50/50 split."""
    return make_sin(seed=seed)


@DATASETS.register("digits", kind="image")
def load_digits(seed: int = 0, flatten: bool = True):
    """'digits': scikit-learn's real 8×8 digits in [0, 1] (for tests), seeded stratified 75/25 split."""
    return make_digits(seed=seed, flatten=flatten)
