"""CIFAR-10: the real data through torchvision (an existing cifar-10-batches-py folder, or download), and a
SYNTHETIC STAND-IN written in the same pickle format and loaded through a torchvision CIFAR10 subclass whose
md5 table is the one recorded at generation. Real data is never silently replaced by the stand-in."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from repspec_utils.infra.files import md5_file, portable
from repspec_utils.infra.registry import DATASETS

from .core import ArrayDataset, DataIntegrityError, DataMissingError, data_root

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

SYNTHETIC_BASE_FOLDER = "cifar-10-synthetic-batches-py"
SYNTHETIC_MANIFEST = "repspec_synthetic_manifest.json"
SYNTHETIC_README = "README_SYNTHETIC.txt"
SYNTHETIC_GENERATOR_VERSION = 1


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
        out.append(_cifar_to_dataset(ds, "cifar10", f"real: torchvision CIFAR10 from {portable(str(folder))} (md5 verified), "
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
            md5s[fname] = md5_file(tmp / fname)
        meta = {P("num_cases_per_batch"): int(-(-n_train // 5)),
                P("label_names"): [P(c) for c in CIFAR10_CLASSES], P("num_vis"): 3072}
        with open(tmp / "batches.meta", "wb") as f:
            _dump_py2_pickle(meta, f)
        md5s["batches.meta"] = md5_file(tmp / "batches.meta")
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


# What a cifar-10-batches-py pickle may name: numpy's array reconstruction and nothing else (the batches are dicts
# of str / bytes / int lists and one uint8 array). Anything else, os.system included, is refused before it runs.
_SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class UnsafePickleError(DataIntegrityError):
    """A data pickle names a global other than numpy's array reconstruction: refused, nothing was run."""


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"refusing to unpickle {module}.{name}: a CIFAR batch file holds only plain data and "
                                f"numpy arrays (the file was crafted or is not a CIFAR batch)")


def safe_load_batch(path: str | os.PathLike) -> dict:
    """A cifar-10-batches-py file as torchvision reads it (pickle, latin1) but with only numpy arrays and plain data
    allowed: `UnsafePickleError` for any other global, before it is called."""
    with open(path, "rb") as f:
        try:
            return _SafeUnpickler(f, encoding="latin1").load()
        except UnsafePickleError as e:
            raise UnsafePickleError(f"{path}: {e}") from None


_SYNTHETIC_CLS = None


def _synthetic_cifar10_class():
    """Build (once) `SyntheticCIFAR10`, the torchvision CIFAR10 subclass; torchvision is imported lazily."""
    global _SYNTHETIC_CLS
    if _SYNTHETIC_CLS is not None:
        return _SYNTHETIC_CLS
    from torchvision.datasets import CIFAR10, VisionDataset

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
            # torchvision's CIFAR10.__init__ would unpickle the batches with pickle.load: read them here with the
            # restricted unpickler instead (a crafted batch plus an edited manifest must not run code)
            VisionDataset.__init__(self, root, transform=transform, target_transform=target_transform)
            self.train = train
            if download:
                self.download()
            if not self._check_integrity():
                raise DataIntegrityError(f"synthetic CIFAR-10 in {folder} is missing or corrupted (fails its md5 checks); "
                                         f"regenerate it with make_synthetic_cifar10.")
            data, targets = [], []
            for fname, _ in (self.train_list if train else self.test_list):
                entry = safe_load_batch(folder / fname)
                data.append(entry["data"])
                targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
            self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
            self.targets = targets
            self._load_meta()

        def _load_meta(self) -> None:
            meta = safe_load_batch(Path(self.root) / self.base_folder / self.meta["filename"])
            self.classes = meta[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

        def download(self) -> None:
            if not self._check_integrity():
                raise DataIntegrityError("synthetic CIFAR-10 cannot be downloaded; regenerate it with "
                                         "make_synthetic_cifar10(root).")

    SyntheticCIFAR10.__module__ = "repspec_utils.data"  # where the lazy attribute lives
    _SYNTHETIC_CLS = SyntheticCIFAR10
    return SyntheticCIFAR10


def _verify_synthetic(folder: Path) -> dict:
    man = _synthetic_manifest(folder)
    fix = ("Fix: delete the folder and call get_data('cifar10_synthetic') (or make_synthetic_cifar10) "
           "to regenerate it.")
    for fname, want in man["md5"].items():
        p = folder / fname
        if not p.is_file():
            raise DataMissingError(f"synthetic CIFAR-10 file missing: {p} (expected md5 {want}). {fix}")
        got = md5_file(p)
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
               f"{portable(str(folder))} (n_train={man['n_train']}, n_test={man['n_test']}, seed={man['seed']}, md5 verified), "
               f"{'train' if train else 'test'} split")
        out.append(_cifar_to_dataset(ds, "cifar10_synthetic", src, flatten))
    return out[0], out[1]


# ----------------------------------------------------------------------------------------------------
# Entry point


@DATASETS.register("cifar10", kind="image")
def load_cifar10(root=None, download: bool = False, flatten: bool = False, cifar_dir=None):
    """'cifar10': torchvision's CIFAR10 on an existing cifar-10-batches-py folder (argument cifar_dir, env
    REPSPEC_CIFAR10_DIR, or <root>/cifar-10-batches-py), md5-checked, or download=True. (N, 3, 32, 32)."""
    return _load_cifar10(root, cifar_dir, download, bool(flatten))


@DATASETS.register("cifar10_synthetic", kind="image")
def load_cifar10_synthetic(root=None, seed: int = 0, flatten: bool = False, n_train: int = 5000,
                           n_test: int = 1000):
    """'cifar10_synthetic': the SYNTHETIC STAND-IN for CIFAR-10 (`make_synthetic_cifar10`, generated once per
    (seed, n_train, n_test) and md5-verified); its `source` says so and `ArrayDataset.synthetic` is True."""
    return _load_cifar10_synthetic(root, int(n_train), int(n_test), int(seed), bool(flatten))
