"""The dataset type, the data root, and `get_data`, which resolves a dataset name through the registry.

A loader registered in `registry.DATASETS` returns (train, test) `ArrayDataset`s. `get_data(name, **kwargs)`
passes the keyword arguments the loader declares; the common ones (root, seed, download, flatten) are passed
only to loaders that take them, any other keyword a loader does not take is an error.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..files import REPO_ROOT
from ..registry import DATASETS

COMMON_ARGS = ("root", "seed", "download", "flatten")  # loaders that have no use for one of these ignore it


class DataIntegrityError(RuntimeError):
    """A data file is missing or does not match its expected md5; the message names the file and the fix."""


class DataMissingError(DataIntegrityError, FileNotFoundError):
    """A required data file or folder does not exist."""


# ----------------------------------------------------------------------------------------------------
# ArrayDataset
# ----------------------------------------------------------------------------------------------------
@dataclass(eq=False)  # tensors: compare fields explicitly, not with ==
class ArrayDataset:
    """A whole dataset as tensors: x float32 (N, ...) inside `box`, y int64 (N,), with its provenance."""

    x: Tensor
    y: Tensor
    name: str
    source: str
    box: tuple[float, float]
    n_classes: int

    def __post_init__(self) -> None:
        if not isinstance(self.x, Tensor) or self.x.dtype != torch.float32:
            raise TypeError(f"ArrayDataset.x must be a float32 tensor, got {getattr(self.x, 'dtype', type(self.x))}")
        if not isinstance(self.y, Tensor) or self.y.dtype != torch.int64 or self.y.ndim != 1:
            raise TypeError("ArrayDataset.y must be a 1-D int64 tensor")
        if self.x.shape[0] != self.y.shape[0]:
            raise ValueError(f"x has {self.x.shape[0]} rows but y has {self.y.shape[0]}")
        self.box = (float(self.box[0]), float(self.box[1]))
        if not self.box[0] < self.box[1]:
            raise ValueError(f"box must satisfy vmin < vmax, got {self.box}")
        if self.x.numel():
            lo, hi = torch.aminmax(self.x)
            if not (lo.item() >= self.box[0] and hi.item() <= self.box[1]):  # also catches NaN
                raise ValueError(f"x values [{lo.item():g}, {hi.item():g}] lie outside box {self.box}")
        if self.y.numel() and (self.y.min().item() < 0 or self.y.max().item() >= self.n_classes):
            raise ValueError(f"labels must lie in [0, {self.n_classes})")

    @property
    def synthetic(self) -> bool:
        """True iff this is a synthetic stand-in for real data (its `source` starts with 'SYNTHETIC')."""
        return self.source.lstrip().upper().startswith("SYNTHETIC")

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx) -> "ArrayDataset":
        """The rows `idx` (index tensor / array / list / slice / bool mask) as a new ArrayDataset."""
        if isinstance(idx, slice):
            x, y = self.x[idx], self.y[idx]
        else:
            idx_t = torch.as_tensor(np.asarray(idx) if not isinstance(idx, Tensor) else idx)
            if idx_t.dtype != torch.bool:
                idx_t = idx_t.long()
            x, y = self.x[idx_t], self.y[idx_t]
        return ArrayDataset(x=x, y=y, name=self.name, source=self.source, box=self.box, n_classes=self.n_classes)

    def class_counts(self) -> Tensor:
        """Number of samples per class, int64 (n_classes,)."""
        return torch.bincount(self.y, minlength=self.n_classes)

    def __repr__(self) -> str:
        return (f"ArrayDataset(name={self.name!r}, n={len(self)}, x={tuple(self.x.shape)}, "
                f"n_classes={self.n_classes}, box={self.box}, synthetic={self.synthetic}, source={self.source!r})")


# ----------------------------------------------------------------------------------------------------


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: `root`, else env REPSPEC_DATA, else <repo>/data."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("REPSPEC_DATA")
    if env:
        return Path(env).expanduser()
    return REPO_ROOT / "data"


def dataset_names() -> tuple[str, ...]:
    """Every registered dataset name (`registry.DATASETS`), sorted."""
    return DATASETS.names()


def normalize_name(name: str) -> str:
    """The registered name of `name` (case and '-' vs '_' ignored); ValueError listing the valid names."""
    key = str(name).strip().lower().replace("-", "_")
    DATASETS.check(key)
    return key


def get_data(name: str, **kwargs) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) ArrayDatasets of a registered dataset (`dataset_names()`; each loader's docstring says
    what it is and which arguments it takes).

    Common arguments, passed to the loaders that take them: root (data root: argument, env REPSPEC_DATA, or
    <repo>/data), seed (data seed of generated or subsampled sets), download (let torchvision download; needs
    internet), flatten (images as (N, D) or (N, C, H, W); None: the loader's default).
    For 'xor' and 'xor_noisy' the test set is the training set (the same object).
    """
    key = normalize_name(name)
    loader = DATASETS[key]
    params = inspect.signature(loader).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    call = {}
    for k, v in kwargs.items():
        if k in params or takes_any:
            if not (k in COMMON_ARGS and v is None):
                call[k] = v
        elif k not in COMMON_ARGS:
            accepted = [p for p in params if params[p].kind is not inspect.Parameter.VAR_KEYWORD]
            raise ValueError(f"dataset {key!r} takes no argument {k!r}; it takes {accepted or 'none'}")
    return loader(**call)
