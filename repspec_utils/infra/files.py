"""Files: the repository root, atomic writes, and file digests (a leaf module: imports nothing from the package).

Every file the package writes (cache entries, figures, tables, manifests, stamps, downloaded weights) goes
through `atomic_write_bytes` or `atomic_path`, so a reader sees either the old file or the complete new one,
and an interrupted writer leaves no partial file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["REPO_ROOT", "portable", "atomic_path", "atomic_write_bytes", "atomic_write_text", "md5_file",
           "clean_stale_temporaries", "STALE_TMP_SECONDS"]

STALE_TMP_SECONDS = 600.0  # a temporary of `atomic_path` older than this belongs to a writer that was killed


def portable(text: str) -> str:
    """`text` with this machine's absolute paths made portable, for footers, manifests and tables: the repository
    root is dropped (paths become relative to it, e.g. 'data/MNIST/raw') and a data root outside it set by
    $REPSPEC_DATA reads '$REPSPEC_DATA'."""
    text = str(text)
    data = os.environ.get("REPSPEC_DATA")
    if data:
        text = text.replace(str(Path(data).expanduser()).rstrip("/") + "/", "$REPSPEC_DATA/")
    return text.replace(str(REPO_ROOT) + os.sep, "")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """A temporary path beside `path` to write to; on a clean exit it replaces `path` in one step (os.replace),
    on an exception it is removed and `path` is left as it was. The result is an ordinary 0644 file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; what we write is for reading
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def clean_stale_temporaries(folder: str | os.PathLike, max_age_s: float = STALE_TMP_SECONDS) -> list[Path]:
    """Remove the temporaries that `atomic_path` leaves when its process is killed (kill -9 skips the clean-up):
    files named '.<name>.<random>.tmp' anywhere under `folder` whose last write is older than `max_age_s` (a live
    writer's temporary is younger). Returns the removed paths."""
    import time

    folder = Path(folder)
    if not folder.is_dir():
        return []
    now, removed = time.time(), []
    for tmp in folder.rglob(".*.tmp"):
        with contextlib.suppress(OSError):
            if tmp.is_file() and now - tmp.stat().st_mtime > max_age_s:
                tmp.unlink()
                removed.append(tmp)
    return removed


def atomic_write_bytes(data: bytes, path: str | os.PathLike) -> None:
    """Write bytes so that readers see the old file or the complete new one, never a partial file."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(text: str, path: str | os.PathLike) -> None:
    """`atomic_write_bytes` of UTF-8 text."""
    atomic_write_bytes(text.encode("utf-8"), path)


def md5_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex md5 of a file, read in chunks (integrity check against published digests, not security)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
