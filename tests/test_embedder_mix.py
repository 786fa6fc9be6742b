"""The embedder's training mix and hard negatives: query rewriting, weights, false-negative filters."""

from __future__ import annotations

import json

import numpy as np
import pytest

from apex_models.data.embedder_mix import mix_pairs, source_pairs, stackexchange_pairs, web_query
from apex_models.data.task_data import write_split
from apex_models.training.negatives import mine_hard_negatives, pick_negatives


@pytest.mark.parametrize("summary, core", [
    ("Returns the Bull Graph.", "get bull graph"),
    ("Creates a absolute path in the file system.", "create absolute path in file system"),
    ("This function checks whether ``x`` is a :class:`Foo` instance", "check whether x is foo instance"),
    ("Compute the standard deviation along given axis, ignoring NaNs", "compute standard deviation along given axis"),
    ("Copies files (recursively) to a folder", "copy files"),
])
def test_web_query_reads_like_a_search(summary: str, core: str) -> None:
    query = web_query(summary, key=summary)
    assert core in query and "python" in query, query
    assert query == query.lower() and not query.endswith(".")
    assert web_query(summary, key=summary) == query  # deterministic per key


def test_web_query_keeps_a_query_that_already_names_python() -> None:
    assert web_query("Parse a Python version string", "k") == "parse python version string"


def test_stackexchange_pairs_take_the_first_code_block() -> None:
    rows = [{"title": "How to connect?", "accepted_answer": "Use this:\n```js\nconst api = new Api({ key: 1 });\n```\nok"},
            {"title": "Why?", "accepted_answer": "Because the node syncs first."},
            {"title": "No answer", "accepted_answer": None}]
    assert stackexchange_pairs(rows) == [("How to connect?", "const api = new Api({ key: 1 });"),
                                         ("Why?", "Because the node syncs first.")]


def test_mix_follows_weights_and_never_repeats_a_function(tmp_path) -> None:
    rows = [{"query": f"Return item {i}", "code": f"def f{i}(): return {i}\n", "source": "pypi"} for i in range(200)]
    rows += [{"query": f"sort list {i}", "code": f"sorted(x{i})", "source": "conala"} for i in range(100)]
    write_split(tmp_path / "train", rows)
    (tmp_path / "tldr.jsonl").write_text("".join(json.dumps({"query": f"List files {i}", "code": f"ls {i}"}) + "\n"
                                                 for i in range(50)))
    pools = source_pairs(tmp_path / "train", tmp_path, seed=1, conala_query=0.0)
    assert {k: len(v) for k, v in pools.items()} == {"docstring": 200, "docstring_query": 200, "conala": 100,
                                                     "stackexchange": 0, "stackexchange_qa": 0, "tldr": 50}
    pairs, counts = mix_pairs(pools, {"docstring": 1, "docstring_query": 1, "conala": 1, "tldr": 1}, 200, seed=1)
    assert counts == {"docstring": 50, "docstring_query": 50, "conala": 50, "tldr": 50}
    codes = [c for _, c in pairs]
    assert len(codes) == len(set(codes))  # a function is drawn with one phrasing only
    assert sum(q.startswith("get item") or "get item" in q for q, _ in pairs) == 50
    assert mix_pairs(pools, {"docstring": 1, "docstring_query": 1, "conala": 1, "tldr": 1}, 200, seed=1)[0] == pairs
    # records the caller already read stand in for stackexchange.jsonl (the ranker reads them once)
    qa = [{"title": "How to connect?", "body": "", "accepted_answer": "Use `connect()`."}]
    given = source_pairs(tmp_path / "train", tmp_path, seed=1, conala_query=0.0, records=qa)
    assert given["stackexchange"] == [("How to connect?", "Use `connect()`.")]
    assert len(given["stackexchange_qa"]) == 1 and given["tldr"] == pools["tldr"]
    with pytest.raises(ValueError, match="unknown mix sources"):
        mix_pairs(pools, {"wikipedia": 1.0}, 10, seed=1)
    with pytest.raises(ValueError, match="every mix weight is 0"):
        mix_pairs(pools, {"docstring": 0.0}, 10, seed=1)


PAIRS = [
    ("read a json file", "def read_json(path):\n    with open(path) as fh:\n        return json.load(fh)\n"),
    ("load json from file", "def read_json(path):\n    with open(path) as fh:\n        return json.load(fh)\n"),  # same code
    ("parse json file contents", "def read_json_file(p):\n    with open(p) as fh:\n        return json.load(fh)\n"),  # near copy
    ("write a json file", "def write_json(path, data):\n    with open(path, 'w') as fh:\n        json.dump(data, fh)\n"),
    ("read a csv file", "def read_csv(path):\n    with open(path) as fh:\n        return list(csv.reader(fh))\n"),
    ("add two numbers", "def add(a, b):\n    return a + b\n"),
]


def test_bm25_mining_skips_copies_and_near_copies() -> None:
    mined, skipped = mine_hard_negatives(PAIRS, top_k=3, method="bm25", max_code_jaccard=0.6)
    assert 1 not in mined[0] and 2 not in mined[0]  # the same function, and a renamed copy
    assert mined[0][0] in (3, 4)  # the closest real negatives: write json, read csv
    assert skipped["same_text"] >= 1 and skipped["near_copy"] >= 1
    assert all(i not in m for i, m in enumerate(mined))


def test_positive_aware_filter_drops_what_the_embedder_scores_near_the_positive() -> None:
    # Fake unit vectors: pair 3's code looks as relevant to query 0 as its own positive.
    vecs = np.eye(len(PAIRS), dtype=np.float32)
    vecs[3] = vecs[0]

    def enc(texts):
        return np.stack([vecs[[t for t, _ in PAIRS].index(x)] if x in [t for t, _ in PAIRS]
                         else vecs[[c for _, c in PAIRS].index(x)] for x in texts])

    mined, skipped = mine_hard_negatives(PAIRS, top_k=3, method="both", encode_queries=enc, encode_documents=enc,
                                         max_code_jaccard=0.6, max_positive_ratio=0.95)
    assert 3 not in mined[0] and skipped["positive_aware"] >= 1


def test_pick_negatives_never_repeats_a_batch_text() -> None:
    pairs = [(f"q{i}", f"c{i % 7}") for i in range(7)] + [(f"r{i}", f"d{i}") for i in range(20)]
    batch = [0, 1, 2]
    mined = [[3, 4, 5, 7, 8]] * len(pairs)  # 3-5 carry batch texts? no: c3..c5 are new; 7, 8 are copies of c0, c1
    negs = pick_negatives(batch, pairs, mined, 2, seed=0, step=5)
    texts = [pairs[i][1] for i in batch] + [pairs[j][1] for j in negs]
    assert len(negs) == 6 and len(texts) == len(set(texts))
    assert pick_negatives(batch, pairs, mined, 2, seed=0, step=5) == negs  # a pure function of (seed, step)
