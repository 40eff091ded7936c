#!/usr/bin/env bash
# The main job (README): set up from nothing, then regenerate every figure at the default profile.
# Extra arguments go to `repspec run`, e.g. `bash scripts/reproduce.sh --profile smoke --only fig2_xor`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/repspec run "$@"
