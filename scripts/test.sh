#!/usr/bin/env bash
# The test command (README, .ci/run): set up from nothing, then the unit tests and every notebook at its
# smoke defaults under nbval. Slow checks are marked `slow` and skipped; run them with `pytest -m slow`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export REPSPEC_PROGRESS=0 MPLBACKEND=Agg
exec .venv/bin/python -m pytest --nbval-lax "$@"
