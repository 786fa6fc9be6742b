"""DVC stage `evaluate_sensitivity`: detectors, model and their union through the ONNX runtime class on the CredSweeper samples and the synthetic test split; registry candidate and promotion (one MLflow run)."""

from apex_models.evaluation.sensitivity import run_evaluate_sensitivity
from apex_models.stage_cli import run_stage

if __name__ == "__main__":
    run_stage("evaluate_sensitivity", __doc__, run_evaluate_sensitivity)
