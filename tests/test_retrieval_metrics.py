"""Retrieval metrics against hand-computed golden values, and BEIR round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest

from apex_models.evaluation.retrieval import (BeirDataset, bm25_run, code_tokens, dense_run, evaluate_run,
                                              load_beir, write_beir)


def test_metrics_golden_values() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    run = {"q1": ["a", "x"], "q2": ["x", "y", "b"], "q3": ["x"] * 0}
    m = evaluate_run(run, qrels)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 3 + 0) / 3, abs=1e-6)
    assert m["recall@1"] == pytest.approx(1 / 3, abs=1e-6)
    assert m["recall@10"] == pytest.approx(2 / 3, abs=1e-6)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(4)) / 3, abs=1e-6)


def test_missing_query_scores_zero() -> None:
    assert evaluate_run({}, {"q": {"d": 1}})["mrr@10"] == 0.0


def test_code_tokens_split_identifiers() -> None:
    assert code_tokens("def readFileLines(path_name): HTTPServer") == [
        "def", "read", "file", "lines", "path", "name", "http", "server"]


def test_beir_round_trip_and_rankers(tmp_path) -> None:
    corpus = {"d1": "def read_file(path): return open(path).read()",
              "d2": "def sort_dict_by_value(d): return sorted(d.items(), key=lambda kv: kv[1])",
              "d3": "def parse_json(text): return json.loads(text)"}
    queries = {"q1": "read a file", "q2": "sort dictionary by value"}
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 1}}
    ds = load_beir(write_beir(tmp_path / "b", corpus, queries, qrels))
    assert ds.corpus == corpus and ds.queries == queries and ds.qrels == qrels
    assert evaluate_run(bm25_run(ds), ds.qrels)["recall@1"] == 1.0

    vocab = ["read", "file", "sort", "dict", "value", "json"]

    def encode(texts):
        v = np.array([[float(w in t.lower()) for w in vocab] for t in texts]) + 1e-3
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    assert evaluate_run(dense_run(ds, encode, encode), ds.qrels)["mrr@10"] == 1.0


def test_load_beir_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="corpus.jsonl"):
        load_beir(tmp_path)
    write_beir(tmp_path / "x", {"d": "t"}, {"q": "t"}, {})
    with pytest.raises(ValueError, match="no query"):
        load_beir(tmp_path / "x")


def test_load_beir_refuses_a_malformed_line(tmp_path) -> None:
    """A benchmark that silently lost a document would change the metric: loading fails instead."""
    root = write_beir(tmp_path / "b", {"d1": "read a file", "d2": "sort a dict"}, {"q": "read"}, {"q": {"d1": 1}})
    with open(root / "corpus.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"_id": "d3", "text": \n')
    with pytest.raises(ValueError, match="corpus.jsonl: 1 malformed JSON line"):
        load_beir(root)
