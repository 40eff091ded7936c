"""Content-addressed cache: hash keys, atomic checksummed writes, corrupt entries detected and rebuilt."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import itertools
import json
import os
import pickle
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from repspec_utils.infra.files import REPO_ROOT, atomic_write_bytes, clean_stale_temporaries

_MAGIC = b"REPSPEC1"
# Bump when a change to the code alters what a cached object would contain.
CACHE_VERSION = 2  # 2: weights_only entries, data content fingerprints in the keys, the reference MLP and re-fit (issues 26, 29)


class CorruptCacheEntry(RuntimeError):
    """A cache file exists but fails its checksum or cannot be decoded."""


class UnsafeCacheEntry(RuntimeError):
    """A cache file with a valid checksum holds objects other than tensors and plain data (a crafted file: loading
    it with pickle could run code). It is refused, left in place for inspection, and nothing in it was run."""


_CLEANED: set[str] = set()


def cache_root() -> Path:
    """The cache folder: $REPSPEC_CACHE or <repo>/cache (created on demand). The first use of a cache folder in a
    process removes the stale temporaries of killed writers in it (`files.clean_stale_temporaries`)."""
    root = Path(os.environ.get("REPSPEC_CACHE", REPO_ROOT / "cache"))
    if str(root) not in _CLEANED:
        _CLEANED.add(str(root))
        clean_stale_temporaries(root)
    return root


def _canonical(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        return repr(obj)  # exact, and 1e-3 vs 0.001 hash alike
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "__dataclass_fields__"):
        # fields a class added after results were cached stay out of the key while they hold their default
        omit = set(getattr(type(obj), "KEY_OMIT_IF_DEFAULT", ()))
        fields = obj.__dataclass_fields__
        return _canonical({k: getattr(obj, k) for k in fields
                           if not (k in omit and getattr(obj, k) == fields[k].default)})
    raise TypeError(f"cannot hash {type(obj).__name__} in a cache key: {obj!r}")


def make_key(**parts: Any) -> str:
    """A 20-hex-digit key: sha256 of the canonical JSON of everything that determines the object."""
    blob = json.dumps({"_v": CACHE_VERSION, **_canonical(parts)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def save(obj: Any, path: str | Path) -> None:
    """torch.save `obj` to `path` atomically, with a sha256 header that `load` verifies."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    payload = buf.getvalue()
    atomic_write_bytes(_MAGIC + hashlib.sha256(payload).digest() + payload, path)


def load(path: str | Path, *, remove_corrupt: bool = True) -> Any | None:
    """Load an object written by `save`; None if missing. A corrupt file warns, is removed, and gives None."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return _load_verified(path)
    except CorruptCacheEntry as err:
        warnings.warn(f"{err}; it will be rebuilt", RuntimeWarning, stacklevel=2)
        if remove_corrupt:
            path.unlink(missing_ok=True)
        return None


def _load_verified(path: Path) -> Any:
    raw = path.read_bytes()
    head = len(_MAGIC) + 32
    if len(raw) < head or raw[: len(_MAGIC)] != _MAGIC:
        raise CorruptCacheEntry(f"cache file {path} has no valid header")
    payload = raw[head:]
    if hashlib.sha256(payload).digest() != raw[len(_MAGIC) : head]:
        raise CorruptCacheEntry(f"cache file {path} fails its checksum")
    import torch

    # weights_only: tensors, dicts, lists, str / numbers only. The sha256 header proves that the file is intact,
    # not who wrote it (caches are copied between machines and shared), so nothing in it may name code to run.
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCacheEntry(
            f"cache file {path} holds objects other than tensors and plain data, and was not loaded (nothing in it "
            f"ran). repspec never writes such entries: the file was crafted or comes from another program. Delete "
            f"it (or the cache folder) if you do not need it as evidence. Detail: {str(exc).splitlines()[0]}") from None
    except Exception as exc:  # pragma: no cover - checksum catches nearly everything first
        raise CorruptCacheEntry(f"cache file {path} cannot be decoded: {exc}") from exc


def cached(path: str | Path, compute: Callable[[], Any]) -> Any:
    """Return the object stored at `path`, computing and saving it first if missing or corrupt."""
    obj = load(path)
    if obj is None:
        obj = compute()
        save(obj, path)
    return obj


LOCK_TIMEOUT_S = 24 * 3600.0


@contextlib.contextmanager
def key_lock(path: str | Path, timeout_s: float | None = None, poll_s: float = 0.2):
    """An exclusive lock on one cache key across processes (and, where the file system supports POSIX locks,
    across machines): `<path>.lock` held with fcntl.flock for the block. The lock dies with its process, so a
    killed job never leaves a stale lock. Two processes that need the same key: the second waits, then finds the
    entry the first wrote (callers re-check the cache inside the block). TimeoutError after `timeout_s`
    (default LOCK_TIMEOUT_S) naming the lock file."""
    lock = Path(f"{path}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    limit = LOCK_TIMEOUT_S if timeout_s is None else float(timeout_s)
    start = time.monotonic()
    with open(lock, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - start > limit:
                    raise TimeoutError(f"waited {limit:g} s for the cache lock {lock} (another process is computing "
                                       f"this entry; if none is, delete the file)") from None
                time.sleep(poll_s)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def progress_enabled(progress: bool | None = None) -> bool:
    """Whether to show progress bars: never with $REPSPEC_PROGRESS=0; else the argument if given; else on with
    $REPSPEC_PROGRESS=1, and otherwise only where someone watches: a terminal on stderr, or a Jupyter kernel
    (where tqdm.auto draws ipywidgets bars). Logs and pipes get no carriage-return bars."""
    env = os.environ.get("REPSPEC_PROGRESS", "")
    if env == "0":
        return False
    if progress is not None:
        return bool(progress)
    if env == "1":
        return True
    return _interactive()


def _interactive() -> bool:
    import sys

    shell = sys.modules.get("IPython")
    if shell is not None:
        ip = getattr(shell, "get_ipython", lambda: None)()
        if ip is not None and type(ip).__name__ == "ZMQInteractiveShell":
            return True
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


# ------------------------------------------------------------------------------------------- compute ledger
# What the objects a notebook used cost to compute the first time (not how long a cached redraw took): every
# producer (training, burn-in, attack, readout re-fit) notes its entry's original seconds under its cache key,
# whether it computed the entry now or loaded it, so a figure can say how long its results took to make.
# Keys make the sum count a shared burn-in once. None = not recorded (an entry cached before times were stored).
_LEDGER: dict[tuple[str, str], float | None] = {}
_UNKEYED = itertools.count()


def note_compute(kind: str, key: str | None, seconds: float | None) -> None:
    """Record that the current run used cache entry `key` of `kind` ('train', 'burn-in', 'attack', 'refit'),
    which took `seconds` to compute (None if unknown); uncached analyses ('metric', 'sigma-trace') note the
    seconds they just took. key None: work with no cache entry (e.g. an attack without a cache key), a new
    entry on every call."""
    if key is None:
        key = f"unkeyed-{next(_UNKEYED)}"
    _LEDGER[(kind, key)] = None if seconds is None else float(seconds)


def compute_summary() -> dict[str, dict[str, float | int]]:
    """Per kind: total recorded seconds, number of entries, and how many had no recorded time."""
    out: dict[str, dict[str, float | int]] = {}
    for (kind, _), s in _LEDGER.items():
        row = out.setdefault(kind, {"seconds": 0.0, "entries": 0, "unrecorded": 0})
        row["entries"] += 1
        if s is None:
            row["unrecorded"] += 1
        else:
            row["seconds"] += s
    return out


def reset_compute() -> None:
    """Forget the ledger (a notebook's run starts here)."""
    _LEDGER.clear()
