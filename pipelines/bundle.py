"""DVC stage `bundle`: assemble the versioned bundle with manifest and model card."""

from apex_models.stage_cli import run_stage
from apex_models.export.stages import run_bundle

if __name__ == "__main__":
    run_stage("bundle", __doc__, run_bundle)
