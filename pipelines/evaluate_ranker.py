"""DVC stage `evaluate_ranker`: embedder top-k alone vs re-ranked, on CoSQA test and the Stack Exchange Q&A set."""

from apex_models.stage_cli import run_stage
from apex_models.evaluation.rerank import run_evaluate_ranker

if __name__ == "__main__":
    run_stage("evaluate_ranker", __doc__, run_evaluate_ranker)
