"""DVC stage `train_ranker`: the cross-encoder on the ranker dataset (pairs with mined hard negatives), one MLflow run."""

from apex_models.stage_cli import run_stage
from apex_models.training.ranker import run_train_ranker

if __name__ == "__main__":
    run_stage("train_ranker", __doc__, run_train_ranker)
