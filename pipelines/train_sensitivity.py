"""DVC stage `train_sensitivity`: the LoRA MiniLM token classifier (SECRET/PII spans), threshold tuned on synthetic dev (one MLflow run)."""

from apex_models.stage_cli import run_stage
from apex_models.training.sensitivity import run_train_sensitivity

if __name__ == "__main__":
    run_stage("train_sensitivity", __doc__, run_train_sensitivity)
