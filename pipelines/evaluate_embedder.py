"""DVC stage `evaluate`: score BM25, the base and the tuned embedder (one MLflow run)."""

from apex_models.stage_cli import run_stage
from apex_models.evaluation.stages import run_evaluate

if __name__ == "__main__":
    run_stage("evaluate", __doc__, run_evaluate)
