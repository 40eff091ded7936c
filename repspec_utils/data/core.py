"""The dataset type, the data root, and `get_data`, which resolves a dataset name through the registry.

A loader registered in `registry.DATASETS` returns (train, test) `ArrayDataset`s. `get_data(name, **kwargs)`
passes the keyword arguments the loader declares; the common ones (root, seed, download, flatten) are passed
only to loaders that take them, any other keyword a loader does not take is an error.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from repspec_utils.infra.files import REPO_ROOT
from repspec_utils.infra.registry import DATASETS

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
    # what data this is, by content: the fingerprint of the files it was loaded from (both splits: `get_data`
    # sets it), kept by `subset`; None: computed from the tensors on first use (`identity`)
    fingerprint: str | None = None

    @property
    def identity(self) -> str:
        """The data's content fingerprint (the loaded files', or a sha256 of x, y, box and n_classes): part of every
        cache key that depends on the data, so a result computed on other data is never served for this one."""
        if self.fingerprint is None:
            h = hashlib.sha256()
            for t in (self.x, self.y):
                h.update(str((tuple(t.shape), str(t.dtype))).encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
            h.update(repr((self.box, self.n_classes)).encode())
            self.fingerprint = "tensors:" + h.hexdigest()[:32]
        return self.fingerprint

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
        return ArrayDataset(x=x, y=y, name=self.name, source=self.source, box=self.box, n_classes=self.n_classes,
                            fingerprint=self.fingerprint)

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


def data_fingerprint(md5s: dict[str, str]) -> str:
    """The fingerprint of data loaded from files with these md5s (file name -> md5): 'md5:' + 32 hex digits."""
    blob = json.dumps(sorted(md5s.items())).encode()
    return "md5:" + hashlib.sha256(blob).hexdigest()[:32]


def pair_fingerprint(train: ArrayDataset, test: ArrayDataset) -> str:
    """One fingerprint of a (train, test) pair: the shared one of split files, else both combined."""
    a, b = train.identity, test.identity
    return a if a == b else "pair:" + hashlib.sha256(f"{a}|{b}".encode()).hexdigest()[:32]


def _call_args(key: str, fn, kwargs: dict) -> dict:
    params = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    call = {}
    for k, v in kwargs.items():
        if k in params or takes_any:
            if not (k in COMMON_ARGS and v is None):
                call[k] = v
        elif k not in COMMON_ARGS:
            accepted = [p for p in params if params[p].kind is not inspect.Parameter.VAR_KEYWORD]
            raise ValueError(f"dataset {key!r} takes no argument {k!r}; it takes {accepted or 'none'}")
    return call


def dataset_fingerprint(name: str, **kwargs) -> str:
    """The content fingerprint of what `get_data(name, **kwargs)` would return now, without building tensors where
    the loader can tell it from its files (every file hashed, e.g. MNIST ≈ 0.1 s); generated sets are generated."""
    key = normalize_name(name)
    quick = DATASETS.meta(key).get("fingerprint")
    if quick is not None:
        return quick(**_call_args(key, DATASETS[key], kwargs))
    return pair_fingerprint(*get_data(key, **kwargs))


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
    train, test = loader(**_call_args(key, loader, kwargs))
    both = pair_fingerprint(train, test)  # both splits carry the pair's identity (a subset keeps it)
    if train is test:
        train.fingerprint = both
        return train, test
    train.fingerprint = test.fingerprint = both
    return train, test
