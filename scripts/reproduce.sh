#!/usr/bin/env bash
# The main job (README): set up from nothing, then regenerate every figure at the default profile (cpu) into the
# committed figures/ folder. Extra arguments go to `repspec run` and win over these, e.g.
# `bash scripts/reproduce.sh --profile smoke --only fig2_xor_distance --out-dir runs/try` (a try that leaves
# figures/ alone). figures/ changes only through a complete run at a committed profile (cpu, paper) without
# result-changing --set overrides: a smoke run, or one with such overrides, writes to runs/<profile>/ instead and
# says so. Without --out-dir, `repspec run` itself writes to runs/<profile>/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/repspec run --out-dir figures "$@"
