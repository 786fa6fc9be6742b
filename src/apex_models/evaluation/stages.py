"""The evaluate stage: BM25, the un-tuned base and the tuned embedder on every benchmark.

dev numbers are for selection only; test numbers are the report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from apex_models.config import Params
from apex_models.evaluation.results import write_result
from apex_models.hashing import sha256_bytes
from apex_models.evaluation.retrieval import bm25_run, dense_run, evaluate_run, load_beir
from apex_models.layout import layout
from apex_models.tracking import stage_run

log = logging.getLogger(__name__)

BENCHMARKS = ("cosqa-test", "cosqa-dev", "code-heldout")


def _encoders(params: Params, merged: Path) -> dict[str, Any]:
    from apex_models.models.embedder import TorchEncoder

    cfg = params.embedder
    kwargs = dict(pooling=cfg.pooling, normalize=cfg.normalize, query_max_length=cfg.query_max_length,
                  doc_max_length=cfg.doc_max_length)
    return {"base": TorchEncoder.from_base(cfg.base, **kwargs), "tuned": TorchEncoder.from_base(str(merged), **kwargs)}


def markdown_table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = ["| benchmark | system | nDCG@10 | MRR@10 | R@1 | R@10 | R@100 |", "|---|---|---|---|---|---|---|"]
    for bench, systems in results.items():
        for system, m in systems.items():
            lines.append(f"| {bench} | {system} | {m['ndcg@10']:.4f} | {m['mrr@10']:.4f} | {m['recall@1']:.4f} "
                         f"| {m['recall@10']:.4f} | {m['recall@100']:.4f} |")
    return "\n".join(lines) + "\n"


def run_evaluate(params: Params) -> dict[str, Any]:
    lay = layout(params)
    merged = lay.embedder_model / "merged"
    present = [b for b in BENCHMARKS if (lay.benchmark(b) / "corpus.jsonl").is_file()]
    for missing in sorted(set(BENCHMARKS) - set(present)):
        log.warning("benchmark %s not built (shared folder missing?): skipped", missing)
    results: dict[str, dict[str, dict[str, float]]] = {}
    data = {"datasets/embedder": lay.embedder_data, **{b: lay.benchmark(b) for b in present}}
    with stage_run("evaluate", params, ["embedder", "evaluate"], data=data) as mlflow:
        encoders = _encoders(params, merged)
        bs = params.evaluate.batch_size
        doc_vectors: dict[tuple[str, str], Any] = {}  # CoSQA dev and test share one corpus: encode it once
        for bench in present:
            ds = load_beir(lay.benchmark(bench))
            log.info("%s: %d queries, %d documents", bench, len(ds.queries), len(ds.corpus))
            systems = {"bm25": evaluate_run(bm25_run(ds, k1=params.evaluate.bm25.k1, b=params.evaluate.bm25.b),
                                            ds.qrels)}
            corpus_key = sha256_bytes(json.dumps(ds.corpus, sort_keys=True).encode())
            for name, enc in encoders.items():
                if (name, corpus_key) not in doc_vectors:
                    doc_vectors[name, corpus_key] = enc.encode_documents(list(ds.corpus.values()), bs, progress=True)
                run = dense_run(ds, lambda t, e=enc: e.encode_queries(t, bs), enc.encode_documents,
                                doc_vectors=doc_vectors[name, corpus_key])
                systems[name] = evaluate_run(run, ds.qrels)
            results[bench] = systems
            for system, metrics in systems.items():
                mlflow.log_metrics({f"{bench}/{system}/{k.replace('@', '_at_')}": v for k, v in metrics.items()})
        train_summary = json.loads((lay.embedder_model / "train_summary.json").read_text())
        write_result(lay.results / "embedder.json", "embedder retrieval", results,
                     command="dvc repro evaluate", extra={"profile": params.profile,
                                                          "train_run_id": train_summary.get("mlflow_run_id"),
                                                          "eval_run_id": mlflow.active_run().info.run_id})
        report = lay.results / "embedder.md"
        report.write_text(f"# Embedder retrieval ({params.profile} profile)\n\n"
                          "Produced by `dvc repro evaluate`; `test` figures are the report, `dev` is for selection.\n\n"
                          + markdown_table(results))
        mlflow.log_artifact(str(report))
    return results
