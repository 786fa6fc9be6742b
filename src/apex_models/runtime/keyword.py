"""The in-memory keyword index of the memory store: BM25 (bm25s) over code-aware tokens.

bm25s builds a static index, so adds mark it dirty and the next search rebuilds it
(lazy: a burst of writes costs one rebuild). Removals need no rebuild: the removed
document's position is masked out of the scores until then. Tokens split snake_case and
camelCase (`code_tokens`), so `readFile` in a memory matches "read file" in a query.
Nothing here touches disk: the index is rebuilt from decrypted rows on open.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from apex_models.evaluation.retrieval import code_tokens


def tokens(text: str) -> list[str]:
    """Interned code-aware tokens: shared strings keep 100k memories' token lists small."""
    return [sys.intern(t) for t in code_tokens(text)]


class KeywordIndex:
    """BM25 over the current documents, keyed by store row number."""

    def __init__(self, k1: float = 1.2, b: float = 0.75) -> None:
        self.k1 = k1
        self.b = b
        self._docs: dict[int, list[str]] = {}
        self._bm25 = None
        self._rowid_at = np.zeros(0, dtype=np.int64)
        self._pos_of: dict[int, int] = {}
        self._alive = np.zeros(0, dtype=bool)
        self.dirty = False
        self.rebuilds = 0
        self.last_rebuild_s = 0.0

    def __len__(self) -> int:
        return len(self._docs)

    def add(self, rowid: int, text: str) -> None:
        self.remove(rowid)
        self._docs[rowid] = tokens(text)
        self.dirty = True

    def remove(self, rowid: int) -> None:
        if self._docs.pop(rowid, None) is None:
            return
        pos = self._pos_of.pop(rowid, None)
        if pos is not None:
            self._alive[pos] = False

    def terms(self, rowid: int) -> set[str]:
        return set(self._docs.get(rowid, ()))

    def rebuild(self) -> None:
        import bm25s  # imports scipy: load it only when the first keyword search needs it

        start = time.perf_counter()
        rowids = list(self._docs)
        self._rowid_at = np.array(rowids, dtype=np.int64)
        self._pos_of = {r: i for i, r in enumerate(rowids)}
        self._alive = np.ones(len(rowids), dtype=bool)
        self._bm25 = None
        if rowids:
            self._bm25 = bm25s.BM25(k1=self.k1, b=self.b)
            self._bm25.index([self._docs[r] for r in rowids], show_progress=False)
        self.dirty = False
        self.rebuilds += 1
        self.last_rebuild_s = time.perf_counter() - start

    def scores(self, query_tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(row numbers, BM25 scores) of every live document with a positive score."""
        if self.dirty:
            self.rebuild()
        if self._bm25 is None or not query_tokens:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scores = np.asarray(self._bm25.get_scores(query_tokens), dtype=np.float32)
        hit = np.flatnonzero((scores > 0) & self._alive)
        return self._rowid_at[hit], scores[hit]

    def search(self, query_tokens: list[str], fetch: int) -> list[tuple[int, float]]:
        """Top `fetch` rows by BM25 score, best first."""
        rowids, scores = self.scores(query_tokens)
        if len(rowids) > fetch:
            top = np.argpartition(-scores, fetch - 1)[:fetch]
            rowids, scores = rowids[top], scores[top]
        order = np.argsort(-scores, kind="stable")
        return [(int(rowids[i]), float(scores[i])) for i in order]
