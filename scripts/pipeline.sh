#!/usr/bin/env bash
# The main job: install, then run the offline pipeline with DVC.
#   bash scripts/pipeline.sh            # the default profile (shipped models)
#   bash scripts/pipeline.sh tiny       # the whole DAG in a few minutes
# shared/ (corpora and benchmarks) is read from ../shared, or from $APEX_SHARED.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${1:-default}
bash scripts/setup-env.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
python pipelines/compose.py --profile "$profile" >/dev/null
dvc repro
echo "[pipeline] bundle: $(python -c 'from apex_models.config import load_params; print(load_params().paths.bundle)')" >&2
