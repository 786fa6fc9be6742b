#!/usr/bin/env bash
# Create .venv and install the project with every version pinned. Safe to re-run: it
# reinstalls only when pyproject.toml or requirements/constraints.txt changed.
#
# torch goes first: installed after anything that depends on it, pip would pull a
# multi-GB CUDA build. It comes from the index pip is configured with; where that index
# serves the CUDA build (PyPI on Linux does), set
#   APEX_TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# for the CPU wheel. On a GPU machine see docs/gpu.md instead.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
want=$(cat pyproject.toml requirements/constraints.txt | sha256sum | cut -d' ' -f1)
stamp=.venv/.install-stamp
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "[setup] .venv is up to date" >&2
  exit 0
fi
start=$(date +%s)
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "torch==2.13.0" ${APEX_TORCH_INDEX_URL:+--index-url "$APEX_TORCH_INDEX_URL"}
.venv/bin/python -m pip install -q -c requirements/constraints.txt -e ".[train,cloud,dev]"
echo "$want" > "$stamp"
echo "[setup] installed in $(( $(date +%s) - start )) s" >&2
