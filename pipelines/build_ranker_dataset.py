"""DVC stage `ranker_dataset`: (query, document) pairs by the ranker's mix with hard negatives mined by BM25 and the current embedder."""

from apex_models.data.ranker_dataset import run_ranker_dataset
from apex_models.stage_cli import run_stage

if __name__ == "__main__":
    run_stage("ranker_dataset", __doc__, run_ranker_dataset)
