"""DVC stage `export_sensitivity`: the token classifier as ONNX fp32 and int8 with tokenizer and manifest; argmax-agreement gates fail the stage."""

from apex_models.export.sensitivity import run_export_sensitivity
from apex_models.stage_cli import run_stage

if __name__ == "__main__":
    run_stage("export_sensitivity", __doc__, run_export_sensitivity)
