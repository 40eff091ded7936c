"""Provenance: the git commit of the checkout a figure was produced from."""

from __future__ import annotations

import subprocess
from pathlib import Path

from repspec_utils.infra.files import REPO_ROOT


def git_commit(repo: str | Path | None = None) -> str:
    """Short hash of HEAD of the repspec repository (or `repo`), plus '-dirty' if tracked files have uncommitted
    changes (untracked files are ignored, as in `git describe --dirty`, and so are the generated outputs a batch run
    rewrites as it goes: figures/, the results page RESULTS.md and README.md, whose verdict block the claims notebook
    rewrites before its manifest — neither feeds any computation); 'unknown' outside git or without commits."""
    cwd = Path(repo) if repo is not None else REPO_ROOT

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)figures",
                    ":(exclude)RESULTS.md", ":(exclude)README.md")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("-dirty" if dirty else "") if head else "unknown"
