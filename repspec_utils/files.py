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

REPO_ROOT = Path(__file__).resolve().parent.parent

__all__ = ["REPO_ROOT", "atomic_path", "atomic_write_bytes", "atomic_write_text", "md5_file"]


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
