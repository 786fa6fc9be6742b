"""DVC stage `train_embedder`: fine-tune the embedder with LoRA (one MLflow run)."""

from apex_models.stage_cli import run_stage
from apex_models.training.stages import run_train_embedder

if __name__ == "__main__":
    run_stage("train_embedder", __doc__, run_train_embedder)
