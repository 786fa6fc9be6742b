"""DVC stage `benchmarks`: lay out the held-out CoSQA dev/test sets in BEIR format."""

from apex_models.stage_cli import run_stage
from apex_models.data.stages import run_benchmarks

if __name__ == "__main__":
    run_stage("benchmarks", __doc__, run_benchmarks)
