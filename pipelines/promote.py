"""DVC stage `promote`: register the candidate embedder; move alias `champion` only on a real gain."""

from apex_models.stage_cli import run_stage
from apex_models.training.stages import run_promote

if __name__ == "__main__":
    run_stage("promote", __doc__, run_promote)
