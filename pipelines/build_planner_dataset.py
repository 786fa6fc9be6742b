"""DVC stage `planner_dataset`: goal -> ordered steps from Stack Exchange <ol> answers and tldr pages, split by unit."""

from apex_models.data.planner_dataset import run_planner_dataset
from apex_models.stage_cli import run_stage

if __name__ == "__main__":
    run_stage("planner_dataset", __doc__, run_planner_dataset)
