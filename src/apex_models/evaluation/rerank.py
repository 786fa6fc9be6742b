"""Re-ranking evaluation: the embedder's top-k alone vs re-scored by the cross-encoder.

Benchmarks: CoSQA test (web query -> Python function) and the Stack Exchange Q&A set
(question title + body -> its accepted answer among every answer of the site), both in
BEIR layout. We report nDCG@10 / MRR@10 (and recall) of the first stage and of first
stage + ranker, and the ranker's cost per query on CPU (top-k pairs scored one query
at a time, as a search call would).
"""

from __future__ import annotations

import html
import logging
import re
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from apex_models.config import Params
from apex_models.evaluation.retrieval import BeirDataset, Run, dense_run, evaluate_run, load_beir, write_beir

log = logging.getLogger(__name__)

_TAG = re.compile(r"<[^>]+>")


def _plain(body: str) -> str:
    """Stack Exchange bodies are HTML: drop tags, unescape entities, collapse whitespace."""
    return " ".join(html.unescape(_TAG.sub(" ", html.unescape(body or ""))).split())


def write_qa_beir(xml_path: str | Path, out_dir: str | Path, max_queries: int | None = None) -> Path:
    """A BEIR folder from a Stack Exchange Posts.xml: question -> its accepted answer.

    Corpus: every answer (PostTypeId=2) as ``a<Id>``; queries: each question whose
    accepted answer is in the dump, as ``q<Id>`` with title and body joined; qrels: the
    accepted answer, relevance 1. Streamed, so a full dump works too. `max_queries`
    keeps the first questions by id (for quick runs).
    """
    answers: dict[str, str] = {}
    questions: dict[str, tuple[str, str]] = {}
    for _, elem in ET.iterparse(xml_path, events=("end",)):
        if elem.tag != "row":
            continue
        kind, pid = elem.get("PostTypeId"), elem.get("Id")
        if kind == "2":
            answers[f"a{pid}"] = _plain(elem.get("Body"))
        elif kind == "1" and elem.get("AcceptedAnswerId"):
            text = f"{_plain(elem.get('Title'))} {_plain(elem.get('Body'))}".strip()
            questions[f"q{pid}"] = (text, f"a{elem.get('AcceptedAnswerId')}")
        elem.clear()
    ordered = sorted((q for q in questions if questions[q][1] in answers), key=lambda q: int(q[1:]))
    if max_queries is not None:
        ordered = ordered[:max_queries]
    if not ordered:
        raise ValueError(f"{xml_path}: no question with an accepted answer in the dump")
    queries = {q: questions[q][0] for q in ordered}
    qrels = {q: {questions[q][1]: 1} for q in ordered}
    return write_beir(out_dir, answers, queries, qrels, split="test")


class CrossEncoder:
    """A (query, candidate) scorer from a merged sequence-classification folder (num_labels=1)."""

    def __init__(self, folder: str | Path, max_length: int = 256, batch_size: int = 64):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        self.max_length, self.batch_size, self._torch = max_length, batch_size, torch

    @classmethod
    def from_model(cls, model, tokenizer, max_length: int = 256, batch_size: int = 64) -> "CrossEncoder":
        import torch

        self = cls.__new__(cls)
        self.model, self.tokenizer, self.max_length, self.batch_size, self._torch = (
            model.eval(), tokenizer, max_length, batch_size, torch)
        return self

    def score(self, query: str, docs: list[str]) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(docs), self.batch_size):
                part = docs[start:start + self.batch_size]
                batch = self.tokenizer([query] * len(part), part, padding=True, truncation="longest_first",
                                       max_length=self.max_length, return_tensors="pt")
                out.append(self.model(**batch).logits.float().view(-1).numpy())
        return np.concatenate(out) if out else np.zeros(0)


FirstStage = Callable[[str, list[str]], np.ndarray]


def first_stage_scores(ds: BeirDataset, query_vectors: np.ndarray, doc_vectors: np.ndarray,
                       scale: float) -> FirstStage:
    """`(qid, doc ids) -> scale x cosine`, from the vectors the first stage ranked with
    (rows in `ds.queries` and `ds.corpus` order): the part of the ranker's score that
    comes from the embedder (``ranker.first_stage_scale``)."""
    q_row = {qid: i for i, qid in enumerate(ds.queries)}
    d_row = {did: i for i, did in enumerate(ds.corpus)}

    def score(qid: str, doc_ids: list[str]) -> np.ndarray:
        return scale * (doc_vectors[[d_row[d] for d in doc_ids]] @ query_vectors[q_row[qid]])
    return score


def rerank_run(ds: BeirDataset, first: Run, scorer: CrossEncoder, top_k: int, progress: bool = False,
               first_stage: FirstStage | None = None) -> tuple[Run, list[float]]:
    """Re-score each query's first-stage top-k; the rest keep their order after it.

    With `first_stage`, a document's score is its first-stage part plus the cross-encoder's
    logit (a ranker trained with ``first_stage_scale``). Returns the new run and the seconds
    spent per query (the ranker's cost; the first-stage part is a dot product).
    """
    from tqdm.auto import tqdm

    run: Run = {}
    seconds: list[float] = []
    for qid in tqdm(list(ds.queries), desc="rerank", unit="query", disable=not progress):
        ranked = first.get(qid, [])
        head, tail = ranked[:top_k], ranked[top_k:]
        started = time.perf_counter()
        scores = scorer.score(ds.queries[qid], [ds.corpus[d] for d in head])
        if first_stage is not None and head:
            scores = scores + first_stage(qid, head)
        seconds.append(time.perf_counter() - started)
        order = np.argsort(-scores, kind="stable")
        run[qid] = [head[i] for i in order] + tail
    return run, seconds


def latency_ms(ds: BeirDataset, first: Run, scorer: CrossEncoder, top_k: int, n_queries: int,
               first_stage: FirstStage | None = None) -> dict[str, float]:
    """p50/p95/mean milliseconds to re-rank top-k for one query (one warm-up query first)."""
    qids = list(ds.queries)[:n_queries + 1]
    subset = BeirDataset(ds.corpus, {q: ds.queries[q] for q in qids}, {q: ds.qrels[q] for q in qids})
    _, seconds = rerank_run(subset, first, scorer, top_k, first_stage=first_stage)
    ms = np.array(seconds[1:] or seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "mean_ms": round(float(ms.mean()), 1), "queries": int(len(ms)), "pairs_per_query": top_k}


@dataclass
class RerankDev:
    """A dev set for choosing the ranker's step: a few queries, the first stage's ranking of
    the whole corpus for each, and the first stage's part of the score."""

    ds: BeirDataset
    first: Run
    first_stage: FirstStage | None
    top_k: int

    def digest(self) -> str:
        """What a resumed run must match: the queries, their judgements and the first stage's
        top-k per query (which change with the embedder), as one sha256."""
        import hashlib
        import json

        doc = {"queries": self.ds.queries, "qrels": self.ds.qrels, "top_k": self.top_k,
               "first": {q: list(docs[:self.top_k]) for q, docs in self.first.items()}}
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def ndcg(self, scorer: CrossEncoder) -> float:
        """nDCG@10 after `scorer` re-ranks each query's first-stage top-k."""
        run, _ = rerank_run(self.ds, self.first, scorer, self.top_k, first_stage=self.first_stage)
        return evaluate_run(run, self.ds.qrels)["ndcg@10"]


def first_stage_run(ds: BeirDataset, encoder, scale: float, batch_size: int) -> tuple[Run, FirstStage | None]:
    """The embedder's ranking of the whole corpus for each query, and (with `scale`) the
    first-stage part of a residual ranker's score, from the same vectors."""
    doc_vectors = encoder.encode_documents(list(ds.corpus.values()), batch_size, progress=True)
    query_vectors = encoder.encode_queries(list(ds.queries.values()), batch_size)
    first = dense_run(ds, lambda _texts: query_vectors, None, doc_vectors=doc_vectors)
    return first, first_stage_scores(ds, query_vectors, doc_vectors, scale) if scale else None


def rerank_dev(folder: Path, encoder, n_queries: int, top_k: int, scale: float, batch_size: int) -> RerankDev:
    """The first `n_queries` of a BEIR folder (CoSQA dev), ranked over its full corpus by
    `encoder` (the first stage the ranker will re-rank at search time)."""
    full = load_beir(folder)
    qids = list(full.queries)[:n_queries]
    ds = BeirDataset(full.corpus, {q: full.queries[q] for q in qids}, {q: full.qrels[q] for q in qids})
    return RerankDev(ds, *first_stage_run(ds, encoder, scale, batch_size), top_k)


def _benchmarks(params: Params, tmp: Path) -> dict[str, Path]:
    """CoSQA test (the benchmarks stage's folder, or one written here) and the QA set."""
    from apex_models.data.embedder_dataset import write_cosqa_beir

    cfg = params.ranker.eval
    shared = Path(params.paths.shared)
    found: dict[str, Path] = {}
    built = Path(params.paths.data) / "benchmarks" / "cosqa-test"
    if (built / "corpus.jsonl").is_file() and cfg.cosqa_queries is None and cfg.cosqa_corpus_limit is None:
        found["cosqa-test"] = built
    else:
        folder = write_cosqa_beir(shared, "test", tmp / "cosqa-test", cfg.cosqa_queries, cfg.cosqa_corpus_limit,
                                  params.seed)
        if folder is not None:
            found["cosqa-test"] = folder
    qa = sorted((shared / "benchmarks" / "qa").glob("*Posts*.xml")) if (shared / "benchmarks" / "qa").is_dir() else []
    if qa:
        found["qa-" + qa[0].name.split("-Posts")[0]] = write_qa_beir(qa[0], tmp / "qa", cfg.qa_queries)
    else:
        log.warning("no Stack Exchange Q&A dump under %s: QA benchmark skipped", shared / "benchmarks" / "qa")
    return found


def first_stage_encoder(params: Params):
    """(name, TorchEncoder) of the first stage the ranker re-ranks: the trained embedder
    (`models/embedder/merged`), else the embedder's base model, encoding as configured."""
    from apex_models.models.embedder import TorchEncoder
    from apex_models.training.ranker import ranker_paths

    emb, trained = params.embedder, ranker_paths(params)["embedder"]
    name = str(trained) if (trained / "config.json").is_file() else emb.base
    if name == emb.base:
        log.warning("no trained embedder at %s: the first stage is the base model %s", trained, emb.base)
    return name, TorchEncoder.from_base(name, pooling=emb.pooling, normalize=emb.normalize,
                                        query_max_length=emb.query_max_length, doc_max_length=emb.doc_max_length)


def run_evaluate_ranker(params: Params) -> dict[str, Any]:
    """Embedder top-k vs + ranker on each benchmark; writes eval/results/ranker.json."""
    import torch

    from apex_models.evaluation.commands import reproduce_command
    from apex_models.evaluation.results import write_result
    from apex_models.tracking import stage_run
    from apex_models.training.ranker import ranker_paths

    if params.ranker is None:
        raise ValueError("params has no `ranker` section: re-run pipelines/compose.py")
    cfg, paths = params.ranker, ranker_paths(params)
    first_stage, encoder = first_stage_encoder(params)
    scorer = CrossEncoder(paths["model"] / "merged", cfg.max_length, cfg.eval.batch_size)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, \
            stage_run("evaluate_ranker", params, ["ranker", "embedder"], data={"ranker": paths["model"]}) as mlflow:
        for name, folder in _benchmarks(params, Path(tmp)).items():
            ds = load_beir(folder)
            log.info("%s: %d queries, %d documents", name, len(ds.queries), len(ds.corpus))
            first, prior = first_stage_run(ds, encoder, cfg.first_stage_scale, params.evaluate.batch_size)
            reranked, seconds = rerank_run(ds, first, scorer, cfg.eval.top_k, progress=True, first_stage=prior)
            results[name] = {
                "queries": len(ds.queries), "documents": len(ds.corpus), "top_k": cfg.eval.top_k,
                "first_stage_scale": cfg.first_stage_scale,
                "embedder": evaluate_run(first, ds.qrels),
                "embedder+ranker": evaluate_run(reranked, ds.qrels),
                "ranker_cost": latency_ms(ds, first, scorer, cfg.eval.top_k, cfg.eval.latency_queries, prior),
                "ranker_mean_ms_per_query_in_batch_run": round(1000 * float(np.mean(seconds)), 1),
            }
            for system in ("embedder", "embedder+ranker"):
                mlflow.log_metrics({f"{name}/{system.replace('+', '_')}/{k.replace('@', '_at_')}": v
                                    for k, v in results[name][system].items()})
        write_result(paths["results"] / "ranker.json", "cross-encoder re-ranking", results,
                     command=reproduce_command(params, ["build_ranker_dataset", "train_ranker", "evaluate_ranker"]),
                     extra={"profile": params.profile, "first_stage": first_stage,
                            "torch_threads": torch.get_num_threads(),
                            "eval_run_id": mlflow.active_run().info.run_id})
        promotion = _promote(params, mlflow, paths["model"] / "merged", results)
    write_result(paths["results"] / "promotion-ranker.json", "ranker promotion", promotion,
                 command=reproduce_command(params, ["build_ranker_dataset", "train_ranker", "evaluate_ranker"]),
                 extra={"profile": params.profile})
    return {f"{b}/{s}/ndcg@10": r[s]["ndcg@10"] for b, r in results.items() for s in ("embedder", "embedder+ranker")}


def ndcg_gain(results: dict[str, Any]) -> float:
    """The smallest nDCG@10 gain of embedder+ranker over the embedder alone, across benchmarks:
    a ranker ships only if it helps on every benchmark, not on average."""
    return min(r["embedder+ranker"]["ndcg@10"] - r["embedder"]["ndcg@10"] for r in results.values())


def _promote(params: Params, mlflow, merged: Path, results: dict[str, Any]) -> dict[str, Any]:
    """Register the ranker; `champion` only if it raises nDCG@10 over the embedder alone everywhere."""
    from apex_models.training.promotion import promote_over_baseline

    mlflow.log_artifacts(str(merged), "merged_model")
    return promote_over_baseline(
        mlflow.MlflowClient(), params.ranker.registered_model, f"{mlflow.get_artifact_uri()}/merged_model",
        mlflow.active_run().info.run_id, "min_ndcg_at_10_gain", ndcg_gain(results) if results else float("-inf"),
        "embedder_alone", 0.0, params.ranker.promotion_margin)
