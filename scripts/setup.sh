#!/usr/bin/env bash
# Idempotent set-up from nothing: a virtual environment in .venv with repspec and its dependencies
# (the torch>=2.14 / torchvision>=0.29 pair from PyPI), then the offline data (MNIST, Fashion-MNIST).
# Safe to re-run: an existing .venv is reused and verified data is not fetched again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.repspec-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "[setup] installing repspec[dev] (first time: torch + torchvision, about 5 GB, a few minutes)"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[dev]"
  touch "$stamp"
fi
# AutoAttack (issue 13) comes from torchattacks, installed without its dependencies: it pins requests~=2.25, which
# conflicts with JupyterLab's, and never imports requests (its other dependencies, numpy / scipy / tqdm, are ours)
if ! .venv/bin/python -c "import torchattacks" 2>/dev/null; then
  echo "[setup] installing torchattacks 3.5.1 (--no-deps)"
  .venv/bin/python -m pip install --quiet --no-deps "torchattacks==3.5.1"
fi
.venv/bin/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (ipykernel)" >/dev/null
PYTHON=.venv/bin/python bash scripts/fetch_data.sh
echo "[setup] ready: $(.venv/bin/python -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__)')"
