"""Ray Tune sweep over the embedder recipe (config group `sweep`), run on demand.

Each trial is the train_embedder recipe with sampled values (learning rate, LoRA rank by
default), logged as an MLflow run nested under the sweep's run; the trials and the best
are written to eval/results/sweep-embedder.json. Needs the datasets stage's output
(and CoSQA dev for selection). Not a dvc.yaml stage: `dvc repro` never pays for it.
"""

from apex_models.stage_cli import run_stage
from apex_models.training.sweep import run_sweep_stage

if __name__ == "__main__":
    run_stage("sweep_embedder", __doc__, run_sweep_stage)
