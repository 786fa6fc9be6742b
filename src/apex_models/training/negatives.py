"""Hard negatives for the bi-encoder: mined with BM25 and the base embedder, false negatives skipped.

A random in-batch negative is usually trivially unrelated; a hard negative is a document
that a retriever ranks high for the query but that is not its positive, which is where
the model has something to learn. The risk is the *false* negative: another function
that does the same thing, a near copy of the positive, or a pair with the same query.
Training pushes those away and hurts. Each candidate is therefore skipped when

* its document or its query equals the positive pair's (copies across packages);
* its code shares more than ``max_code_jaccard`` of its word-piece set with the positive
  (the same function, vendored or lightly edited);
* with dense scores, the base embedder scores it above ``max_positive_ratio`` times the
  positive's own score for the query (positive-aware filtering, as NV-Retriever: a
  candidate the base model likes nearly as much as the positive is likely relevant);
* it is among the first ``skip_top`` candidates (the most likely to be relevant).

The mined lists are a pure function of the pairs and the config, so a resumed run gets
the same ones.
"""

from __future__ import annotations

from itertools import zip_longest
from typing import Callable

import numpy as np

from apex_models.evaluation.retrieval import BeirDataset, bm25_run, code_tokens

Encode = Callable[[list[str]], np.ndarray]


def _jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _dense_top(q: np.ndarray, d: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Top-`k` document indices per query by inner product, in chunks (no n x n matrix)."""
    k = min(k, len(d))
    out = np.zeros((len(q), k), dtype=np.int64)
    for start in range(0, len(q), chunk):
        scores = q[start:start + chunk] @ d.T
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        rows = np.take_along_axis(scores, part, axis=1)
        out[start:start + chunk] = np.take_along_axis(part, np.argsort(-rows, axis=1, kind="stable"), axis=1)
    return out


def mine_hard_negatives(pairs: list[tuple[str, str]], top_k: int, method: str = "bm25",
                        encode_queries: Encode | None = None, encode_documents: Encode | None = None,
                        skip_top: int = 0, max_code_jaccard: float = 0.8,
                        max_positive_ratio: float = 0.95) -> tuple[list[list[int]], dict[str, int]]:
    """Per pair, up to `top_k` indices (into `pairs`) of other pairs whose document is a hard negative.

    `method` is ``bm25``, ``dense`` (needs the two encoders) or ``both`` (the two
    rankings interleaved). Returns the lists and counts of skipped candidates by reason.
    """
    if method not in ("bm25", "dense", "both"):
        raise ValueError(f"unknown mining method {method!r}; expected bm25, dense or both")
    need_dense = method in ("dense", "both") or max_positive_ratio < 1.0 and encode_queries is not None
    if method != "bm25" and (encode_queries is None or encode_documents is None):
        raise ValueError(f"mining with {method!r} needs an embedder")
    depth = top_k + skip_top + 10  # room for the candidates the filters drop
    rankings: list[list[list[int]]] = []
    if method in ("bm25", "both"):
        ds = BeirDataset({f"d{i}": code for i, (_, code) in enumerate(pairs)},
                         {f"q{i}": query for i, (query, _) in enumerate(pairs)}, {})
        run = bm25_run(ds, k=depth)
        rankings.append([[int(d[1:]) for d in run.get(f"q{i}", [])] for i in range(len(pairs))])
    qv = dv = None
    if need_dense and encode_queries is not None and encode_documents is not None:
        qv = encode_queries([q for q, _ in pairs])
        dv = encode_documents([c for _, c in pairs])
        if method in ("dense", "both"):
            rankings.append(_dense_top(qv, dv, depth).tolist())
    tokens = [set(code_tokens(code)) for _, code in pairs]
    skipped = {"same_text": 0, "near_copy": 0, "positive_aware": 0, "skip_top": 0}
    mined: list[list[int]] = []
    for i, (query, code) in enumerate(pairs):
        ranked = [j for tier in zip_longest(*(r[i] for r in rankings)) for j in tier if j is not None]
        seen, picked, rank = {i}, [], 0
        pos_score = float(qv[i] @ dv[i]) if qv is not None else None
        for j in ranked:
            if j in seen:
                continue
            seen.add(j)
            if pairs[j][1] == code or pairs[j][0] == query:
                skipped["same_text"] += 1
                continue
            rank += 1
            if rank <= skip_top:
                skipped["skip_top"] += 1
                continue
            if _jaccard(tokens[i], tokens[j]) > max_code_jaccard:
                skipped["near_copy"] += 1
                continue
            if pos_score is not None and float(qv[i] @ dv[j]) > max_positive_ratio * pos_score:
                skipped["positive_aware"] += 1
                continue
            picked.append(j)
            if len(picked) == top_k:
                break
        mined.append(picked)
    return mined, skipped


def pick_negatives(batch: list[int], pairs: list[tuple[str, str]], mined: list[list[int]], n: int,
                   seed: int, step: int) -> list[int]:
    """`n` negatives per row of `batch` (flattened row by row), never a text already in the batch.

    A negative equal to another row's positive would be that row's positive counted as a
    negative, so every chosen text must be new to the batch. Candidates are drawn from
    each row's mined list in a seeded order, then, if it runs dry, from random pairs:
    a pure function of (seed, step), so resumed runs draw the same negatives.
    """
    rng = np.random.default_rng([seed, step, 11])
    seen = {t for i in batch for t in pairs[i]}
    out: list[int] = []
    for i in batch:
        chosen = 0
        candidates = [mined[i][k] for k in rng.permutation(len(mined[i]))] if mined[i] else []
        for j in candidates:
            if chosen == n:
                break
            if pairs[j][1] in seen:
                continue
            seen.add(pairs[j][1])
            out.append(j)
            chosen += 1
        tries = 0
        while chosen < n:
            j = int(rng.integers(len(pairs)))
            tries += 1
            if pairs[j][1] in seen and tries < 1000:
                continue
            seen.add(pairs[j][1])
            out.append(j)
            chosen += 1
    return out
