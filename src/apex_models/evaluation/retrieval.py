"""BEIR-layout retrieval evaluation: loading, ranking (BM25 and dense), metrics.

Imports no torch: the dense ranker takes encoder callables, so the same code scores a
bundle's ONNX embedder, a torch model during training, or anything else.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from apex_models.data.records import read_records

Encoder = Callable[[list[str]], np.ndarray]
Run = dict[str, list[str]]
Qrels = dict[str, dict[str, int]]

METRIC_KEYS = ("ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100")


@dataclass(frozen=True)
class BeirDataset:
    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: Qrels


def _read_jsonl(path: Path) -> list[dict]:
    """Every row of a benchmark file; a malformed line fails the load (a scraped corpus may skip
    one, but a benchmark that silently lost a query or document would change the metric)."""
    skipped: Counter = Counter()
    rows = list(read_records(path, skipped))
    if skipped:
        raise ValueError(f"{path}: {skipped['malformed_jsonl_line']} malformed JSON line(s) (logged above)")
    return rows


def _default_split(root: Path) -> str:
    """`test` when present, else the folder's only qrels file (e.g. a dev-only set)."""
    found = sorted(p.stem for p in (root / "qrels").glob("*.tsv"))
    if "test" in found or len(found) != 1:
        return "test"
    return found[0]


def load_beir(path: str | Path, split: str | None = None) -> BeirDataset:
    """Read `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv` (BEIR layout).

    `split` None means `test`, or the only qrels file when there is just one. Only
    queries that have qrels are kept; a corpus document's text is its title and text
    joined, as BEIR does.
    """
    root = Path(path)
    split = split or _default_split(root)
    qrels_path = root / "qrels" / f"{split}.tsv"
    for required in (root / "corpus.jsonl", root / "queries.jsonl", qrels_path):
        if not required.is_file():
            raise FileNotFoundError(f"not a BEIR folder: {required} is missing")
    corpus = {}
    for row in _read_jsonl(root / "corpus.jsonl"):
        title = row.get("title") or ""
        corpus[str(row["_id"])] = f"{title} {row['text']}".strip() if title else row["text"]
    queries_all = {str(r["_id"]): r["text"] for r in _read_jsonl(root / "queries.jsonl")}
    qrels: Qrels = {}
    with open(qrels_path, encoding="utf-8") as fh:
        for i, line in enumerate(fh):
            parts = line.rstrip("\n").split("\t")
            if i == 0 and parts[0] == "query-id":
                continue
            if len(parts) < 3:
                continue
            qid, did, score = parts[0], parts[1], int(float(parts[2]))
            if score > 0:
                qrels.setdefault(qid, {})[did] = score
    queries = {q: t for q, t in queries_all.items() if q in qrels}
    if not queries:
        raise ValueError(f"{root}: no query in queries.jsonl has a positive qrel in {qrels_path.name}")
    return BeirDataset(corpus=corpus, queries=queries, qrels=qrels)


def write_beir(path: str | Path, corpus: dict[str, str], queries: dict[str, str], qrels: Qrels,
               split: str = "test") -> Path:
    """Write a BEIR folder; the inverse of :func:`load_beir`."""
    root = Path(path)
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w", encoding="utf-8") as fh:
        for did, text in corpus.items():
            fh.write(json.dumps({"_id": did, "title": "", "text": text}) + "\n")
    with open(root / "queries.jsonl", "w", encoding="utf-8") as fh:
        for qid, text in queries.items():
            fh.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with open(root / "qrels" / f"{split}.tsv", "w", encoding="utf-8") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in qrels.items():
            for did, score in docs.items():
                fh.write(f"{qid}\t{did}\t{score}\n")
    return root


def evaluate_run(run: Run, qrels: Qrels) -> dict[str, float]:
    """nDCG@10, MRR@10 and Recall@1/10/100 averaged over the queries in `qrels`.

    A query missing from `run` scores zero, so a ranker cannot gain by skipping queries.
    """
    totals = dict.fromkeys(METRIC_KEYS, 0.0)
    for qid, relevant in qrels.items():
        ranked = run.get(qid, [])
        gains = [relevant.get(did, 0) for did in ranked[:100]]
        dcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(gains[:10]) if g > 0)
        ideal = sorted(relevant.values(), reverse=True)[:10]
        idcg = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate(ideal))
        totals["ndcg@10"] += dcg / idcg if idcg else 0.0
        first = next((i for i, g in enumerate(gains[:10]) if g > 0), None)
        totals["mrr@10"] += 1.0 / (first + 1) if first is not None else 0.0
        n_rel = len(relevant)
        for k in (1, 10, 100):
            hits = sum(1 for g in gains[:k] if g > 0)
            totals[f"recall@{k}"] += hits / n_rel
    n = max(len(qrels), 1)
    return {key: round(value / n, 6) for key, value in totals.items()}


_TOKEN = re.compile(r"[A-Za-z][a-z]+|[A-Z]+(?![a-z])|\d+")


def code_tokens(text: str) -> list[str]:
    """Lower-cased word pieces that split snake_case and camelCase (`readFile` -> read, file).

    BM25 on code needs this: identifiers otherwise never match a query's words.
    """
    return [t.lower() for t in _TOKEN.findall(text)]


def bm25_run(ds: BeirDataset, k: int = 100, k1: float = 1.2, b: float = 0.75) -> Run:
    """Rank the corpus for every query with BM25 over :func:`code_tokens`."""
    import bm25s

    doc_ids = list(ds.corpus)
    retriever = bm25s.BM25(k1=k1, b=b)
    retriever.index([code_tokens(ds.corpus[d]) for d in doc_ids], show_progress=False)
    run: Run = {}
    top = min(k, len(doc_ids))
    for qid, text in ds.queries.items():
        tokens = code_tokens(text)
        if not tokens:
            run[qid] = []
            continue
        scores = retriever.get_scores(tokens)
        order = np.argsort(-scores, kind="stable")[:top]
        run[qid] = [doc_ids[i] for i in order if scores[i] > 0]
    return run


def dense_run(ds: BeirDataset, encode_queries: Encoder, encode_docs: Encoder, k: int = 100,
              doc_vectors: np.ndarray | None = None) -> Run:
    """Exact inner-product ranking of unit vectors (cosine).

    `doc_vectors` lets a caller reuse the corpus encoding across several query sets.
    """
    doc_ids = list(ds.corpus)
    if doc_vectors is None:
        doc_vectors = encode_docs([ds.corpus[d] for d in doc_ids])
    qids = list(ds.queries)
    q_vectors = encode_queries([ds.queries[q] for q in qids])
    scores = q_vectors @ doc_vectors.T
    top = min(k, len(doc_ids))
    run: Run = {}
    for row, qid in enumerate(qids):
        part = np.argpartition(-scores[row], top - 1)[:top]
        order = part[np.argsort(-scores[row][part], kind="stable")]
        run[qid] = [doc_ids[i] for i in order]
    return run
