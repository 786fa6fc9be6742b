"""DVC stage `ingest`: fetch the pinned code distributions and record licence and sha256 per file."""

from apex_models.stage_cli import run_stage
from apex_models.data.stages import run_ingest

if __name__ == "__main__":
    run_stage("ingest", __doc__, run_ingest)
