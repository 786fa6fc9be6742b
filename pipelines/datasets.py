"""DVC stage `datasets`: build the embedder's pairs, split by package and decontaminated."""

from apex_models.stage_cli import run_stage
from apex_models.data.stages import run_datasets

if __name__ == "__main__":
    run_stage("datasets", __doc__, run_datasets)
