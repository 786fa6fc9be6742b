"""DVC stage `train_intent`: weak-label dataset, TF-IDF baseline and the LoRA intent classifier (one MLflow run)."""

from apex_models.stage_cli import run_stage
from apex_models.training.intent import run_train_intent

if __name__ == "__main__":
    run_stage("train_intent", __doc__, run_train_intent)
