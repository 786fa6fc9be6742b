"""DVC stage `export`: ONNX fp32 and int8 with parity and accuracy gates (one MLflow run)."""

from apex_models.stage_cli import run_stage
from apex_models.export.stages import run_export

if __name__ == "__main__":
    run_stage("export", __doc__, run_export)
