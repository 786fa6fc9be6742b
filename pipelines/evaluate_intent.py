"""DVC stage `evaluate_intent`: baseline vs model on the gold intent set (dev tunes, test reports)."""

from apex_models.stage_cli import run_stage
from apex_models.evaluation.intent import run_evaluate_intent

if __name__ == "__main__":
    run_stage("evaluate_intent", __doc__, run_evaluate_intent)
