"""DVC stage `evaluate_planner`: ROUGE-L and step recall on held-out plans vs the BM25 nearest-plan baseline; promotion."""

from apex_models.evaluation.planner import run_evaluate_planner
from apex_models.stage_cli import run_stage

if __name__ == "__main__":
    run_stage("evaluate_planner", __doc__, run_evaluate_planner)
