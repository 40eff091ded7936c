"""pytest setup for `pytest --nbval-lax notebooks/`: every figure notebook runs at its stored `parameters`-cell
(smoke) defaults in a fresh kernel whose working directory is notebooks/.

The kernel inherits this process's environment, so it is set here, once, before any kernel starts:
- REPSPEC_PROGRESS=0, MPLBACKEND=Agg: no progress bars, no GUI / inline images.
- REPSPEC_FIGURES: a per-session temp folder, so tests never touch <repo>/figures (the notebooks'
  `out_dir = ""` default resolves to it through `notebook.figure_dir`).
- REPSPEC_CACHE: a per-session temp folder. Notebooks in one session still share models (e.g. MNIST
  training reused by the re-trained-readout figure), but a test never passes on a stale entry written by
  older code under an unchanged key. To iterate fast locally, point REPSPEC_TEST_CACHE at a folder you keep.
- PYTHONPATH: the repository first, so the kernel imports this checkout's repspec_utils even without
  `pip install -e .`.
Set REPSPEC_KEEP_TEST_OUTPUT=1 to keep the temp folder (its path is printed in the header).
"""

import os
import shutil
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_TMP = None


def pytest_configure(config):
    global _TMP
    _TMP = Path(tempfile.mkdtemp(prefix="repspec-nbval-"))
    os.environ["REPSPEC_PROGRESS"] = "0"
    os.environ["MPLBACKEND"] = "Agg"
    os.environ["REPSPEC_FIGURES"] = str(_TMP / "figures")
    os.environ["REPSPEC_CACHE"] = os.environ.get("REPSPEC_TEST_CACHE") or str(_TMP / "cache")
    paths = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def pytest_report_header(config):
    return f"repspec notebooks: figures and cache under {_TMP}"


def pytest_unconfigure(config):
    if _TMP is not None and os.environ.get("REPSPEC_KEEP_TEST_OUTPUT") != "1":
        shutil.rmtree(_TMP, ignore_errors=True)
