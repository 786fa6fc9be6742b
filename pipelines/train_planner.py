"""DVC stage `train_planner`: the goal -> steps generator (MiniLM encoder-decoder by default), one MLflow run."""

from apex_models.stage_cli import run_stage
from apex_models.training.planner import run_train_planner

if __name__ == "__main__":
    run_stage("train_planner", __doc__, run_train_planner)
