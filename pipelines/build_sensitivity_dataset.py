"""DVC stage `sensitivity_dataset`: windows of the ingested code and sources with generated secrets, personal data and look-alikes at known spans."""

from apex_models.data.sensitivity_dataset import run_sensitivity_dataset
from apex_models.stage_cli import run_stage

if __name__ == "__main__":
    run_stage("sensitivity_dataset", __doc__, run_sensitivity_dataset)
