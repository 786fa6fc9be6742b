#!/usr/bin/env bash
# The tests: install, then pytest (extra arguments go to pytest).
#   bash scripts/test.sh
#   bash scripts/test.sh -m "not slow"     # the fast part only
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-env.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
export HF_HOME="$PWD/.cache/hf" MPLBACKEND=Agg
exec python -m pytest "$@"
