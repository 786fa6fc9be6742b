"""The in-memory keyword index of the memory store: BM25 over code-aware tokens, in two segments.

bm25s builds a static index (0.15 s at 10k documents, 3 s at 100k), far too slow to
rebuild on every write. So documents live in two segments:

- main: a bm25s index over every document present at the last merge; a removed or
  replaced document is masked out of its scores (no rebuild; main's own scores keep
  the statistics of the last merge until the next one);
- delta: documents added since, in a small inverted index scored here with the same
  Lucene BM25 formula as bm25s and the combined statistics (documents, document
  frequencies, average length), so their scores sit on main's scale.

When the delta outgrows `max(merge_min, merge_ratio * main)` the next search merges
(rebuilds main over everything): lazy, so a burst of writes pays for one rebuild, and
amortised, so each write costs a small fraction of one. Tokens split snake_case and
camelCase (`code_tokens`): `readFile` in a memory matches "read file" in a query.
Nothing here touches disk; the store either rebuilds the index from decrypted rows on
open or restores it from its sealed snapshot (`state` / `from_state`), where token lists
travel packed as integer ids and stay packed until a document is needed.
"""

from __future__ import annotations

import math
import sys
import time
from collections import Counter

import numpy as np

from apex_models.evaluation.retrieval import code_tokens
from apex_models.runtime.snapshot import canonical


def tokens(text: str) -> list[str]:
    """Interned code-aware tokens: shared strings keep 100k memories' token lists small."""
    return [sys.intern(t) for t in code_tokens(text)]


def row_mask(rows: np.ndarray) -> np.ndarray:
    """A boolean array over row numbers, True at `rows` (sorted, non-negative): a filter that
    membership tests ask of many rows at once."""
    mask = np.zeros(int(rows[-1]) + 1 if len(rows) else 0, dtype=bool)
    mask[rows] = True
    return mask


def rows_in(mask: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Which of `rows` the mask lets through (rows past its end: not)."""
    out = np.zeros(len(rows), dtype=bool)
    inside = rows < len(mask)
    out[inside] = mask[rows[inside]]
    return out


class _Packed:
    """Documents restored from a snapshot: token ids in one array, decoded one at a time on demand
    (unpickling 100k lists of strings costs more than the whole rest of a snapshot)."""

    __slots__ = ("vocab", "ids", "offsets", "pos")

    def __init__(self, vocab: list[str], ids: np.ndarray, offsets: np.ndarray, pos: dict[int, int]) -> None:
        self.vocab, self.ids, self.offsets, self.pos = vocab, ids, offsets, pos

    @classmethod
    def empty(cls) -> "_Packed":
        return cls([], np.zeros(0, dtype=np.int32), np.zeros(1, dtype=np.int64), {})

    def tokens(self, rowid: int) -> list[str] | None:
        i = self.pos.get(rowid)
        if i is None:
            return None
        vocab = self.vocab
        return [vocab[t] for t in self.ids[self.offsets[i]:self.offsets[i + 1]].tolist()]

    def pop(self, rowid: int) -> list[str] | None:
        toks = self.tokens(rowid)
        self.pos.pop(rowid, None)
        return toks


class _Main:
    """The main segment's BM25 scores: bm25s's precomputed (token x document) score matrix in
    CSC form (each token's documents in ascending order), built by bm25s at a merge.

    `get_scores` sums it the way bm25s does (the query tokens' slices added with np.add.at,
    duplicates counted), bit-identical to `bm25s.BM25.get_scores`; `top` picks the best
    documents from those scores. Searching and snapshots need only these arrays, so neither
    imports bm25s (with scipy, about 0.2 s of a fresh process's first open).
    """

    __slots__ = ("vocab_dict", "data", "indices", "indptr", "num_docs")

    def __init__(self, vocab_dict: dict[str, int], data: np.ndarray, indices: np.ndarray, indptr: np.ndarray,
                 num_docs: int) -> None:
        self.vocab_dict, self.data, self.indices, self.indptr, self.num_docs = (
            vocab_dict, canonical(data), canonical(indices), canonical(indptr), int(num_docs))

    @classmethod
    def from_bm25s(cls, bm25) -> "_Main":
        s = bm25.scores
        columns = len(s["indptr"]) - 1  # bm25s's vocabulary also holds "", which has no column
        return cls({t: i for t, i in bm25.vocab_dict.items() if i < columns}, s["data"], s["indices"], s["indptr"],
                   s["num_docs"])

    def _slice(self, token_id: int) -> slice:
        return slice(int(self.indptr[token_id]), int(self.indptr[token_id + 1]))

    def get_scores(self, query_tokens: list[str]) -> np.ndarray:
        ids = [self.vocab_dict[t] for t in query_tokens if t in self.vocab_dict]
        scores = np.zeros(self.num_docs, dtype=np.float32)
        if ids:
            starts, ends = self.indptr[ids].tolist(), self.indptr[np.asarray(ids) + 1].tolist()
            np.add.at(scores, np.concatenate([self.indices[a:b] for a, b in zip(starts, ends)]),
                      np.concatenate([self.data[a:b] for a, b in zip(starts, ends)]))
        return scores

    def top(self, query_tokens: list[str], k: int, alive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(document positions, scores) of the best `k` alive documents with a positive score,
        best first (ties: the lower position), scored exactly as `get_scores`.

        Scoring is cheap (np.add.at: 2.5 ms for 1.5M postings); picking the best k out of a
        million scores is not (argpartition: 10 ms). So the k-th best score among the
        documents of the query's rarest words, a lower bound of the true k-th best, first
        cuts the million down to the few documents at or above it.
        """
        ids = [self.vocab_dict[t] for t in query_tokens if t in self.vocab_dict]
        if not ids or k <= 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        scores = self.get_scores(query_tokens)
        floor = self._floor(scores, sorted(set(ids), key=lambda t: self.indptr[t + 1] - self.indptr[t]), k, alive)
        hit = np.flatnonzero(scores >= floor) if floor > 0 else np.flatnonzero(scores > 0)
        hit = hit[alive[hit]]
        return _top_k(hit, scores[hit], k)

    def _floor(self, scores: np.ndarray, rarest_first: list[int], k: int, alive: np.ndarray) -> float:
        """The k-th best score among the alive documents of the rarest query words (0 when
        they hold fewer than k): no document below it can be in the top k."""
        seeds = np.zeros(0, dtype=self.indices.dtype)
        for term in rarest_first:
            more = self.indices[self.indptr[term]:self.indptr[term + 1]]
            seeds = more if not len(seeds) else np.union1d(seeds, more)  # distinct documents
            seeds = seeds[alive[seeds]]
            if len(seeds) >= k:
                values = scores[seeds]
                return float(np.partition(values, len(values) - k)[len(values) - k])
        return 0.0

    def state(self) -> dict:
        return {"vocab": list(self.vocab_dict), "vocab_ids": np.fromiter(self.vocab_dict.values(), dtype=np.int64,
                                                                         count=len(self.vocab_dict)),
                "data": self.data, "indices": self.indices, "indptr": self.indptr, "num_docs": self.num_docs}

    @classmethod
    def from_state(cls, state: dict | None) -> "_Main | None":
        if state is None:
            return None
        if not isinstance(state, dict):  # snapshots before this class pickled the bm25s object itself
            return cls.from_bm25s(state)
        return cls(dict(zip(state["vocab"], state["vocab_ids"].tolist())), state["data"], state["indices"],
                   state["indptr"], state["num_docs"])


def _top_k(positions: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best of (ascending positions, scores), best first; among equal scores the lower
    position wins, also at the cut, so the answer does not depend on what else was passed."""
    if len(scores) > k:
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        above = scores > kth
        keep = above.copy()
        keep[np.flatnonzero(scores == kth)[:k - int(above.sum())]] = True
        positions, scores = positions[keep], scores[keep]
    order = np.lexsort((positions, -scores))
    return positions[order].astype(np.int64), scores[order]


class KeywordIndex:
    """BM25 over the current documents, keyed by store row number."""

    def __init__(self, k1: float = 1.2, b: float = 0.75, merge_min: int = 500, merge_ratio: float = 0.02) -> None:
        self.k1 = k1
        self.b = b
        self.merge_min = merge_min
        self.merge_ratio = merge_ratio
        self._docs: dict[int, list[str]] = {}
        self._packed = _Packed.empty()  # documents restored from a snapshot, not yet needed
        # main segment
        self._bm25: _Main | None = None
        self._main_rowids = np.zeros(0, dtype=np.int64)
        self._main_pos: dict[int, int] = {}
        self._alive = np.zeros(0, dtype=bool)
        self._main_df: Counter[str] = Counter()
        self._main_n = 0
        self._main_len = 0
        # delta segment: token -> {row number: term frequency}
        self._delta: set[int] = set()
        self._postings: dict[str, dict[int, int]] = {}
        self._delta_len = 0
        self._stale = False  # documents loaded in bulk wait for a merge
        self.rebuilds = 0
        self.last_rebuild_s = 0.0

    def __len__(self) -> int:
        return len(self._docs) + len(self._packed.pos)

    def _tokens(self, rowid: int) -> list[str] | None:
        toks = self._docs.get(rowid)
        return toks if toks is not None else self._packed.tokens(rowid)

    @property
    def pending(self) -> int:
        """Documents in the delta segment (searchable already; merged into main later)."""
        return len(self._delta)

    def _needs_merge(self) -> bool:
        return self._stale or len(self._delta) > max(self.merge_min, self.merge_ratio * self._main_n)

    # -- writes ------------------------------------------------------------------------------
    def add(self, rowid: int, text: str) -> None:
        self.remove(rowid)
        self._add_delta(rowid, tokens(text))

    def _add_delta(self, rowid: int, toks: list[str]) -> None:
        self._docs[rowid] = toks
        self._delta.add(rowid)
        self._delta_len += len(toks)
        for token, tf in Counter(toks).items():
            self._postings.setdefault(token, {})[rowid] = tf

    def load(self, rowid: int, text: str) -> None:
        """Bulk path (opening a store): no delta postings, the next search merges everything."""
        self.remove(rowid)
        self._docs[rowid] = tokens(text)
        self._stale = True

    def remove(self, rowid: int) -> None:
        toks = self._docs.pop(rowid, None)
        if toks is None:
            toks = self._packed.pop(rowid)
        if toks is None:
            return
        pos = self._main_pos.pop(rowid, None)
        if pos is not None:  # masked in main; the statistics the delta uses forget it now
            self._alive[pos] = False
            self._main_n -= 1
            self._main_len -= len(toks)
            self._main_df.subtract(set(toks))
        if rowid in self._delta:
            self._delta.discard(rowid)
            self._delta_len -= len(toks)
            for token in set(toks):
                postings = self._postings[token]
                del postings[rowid]
                if not postings:
                    del self._postings[token]

    def forget(self, rowid: int) -> None:
        """Remove a document and, if main holds its words, rebuild main at the next search."""
        if rowid in self._main_pos:
            self._stale = True
        self.remove(rowid)

    def settle(self) -> None:
        """Merge now when a merge is due or main still keeps statistics (and vocabulary) of
        documents removed since its merge: the state a snapshot should hold, so that the
        index it restores is clean and its first search does not pay for a merge."""
        if self._needs_merge() or not bool(self._alive.all()):
            self.rebuild()

    def terms(self, rowid: int) -> set[str]:
        return set(self._tokens(rowid) or ())

    def rebuild(self) -> None:
        """Merge: one bm25s index over every current document; the delta empties."""
        import bm25s  # imports scipy: load it only when the first merge needs it

        start = time.perf_counter()
        rowids = list(self._docs) + list(self._packed.pos)
        corpus = [self._tokens(r) for r in rowids]
        self._docs, self._packed = dict(zip(rowids, corpus)), _Packed.empty()
        self._main_rowids = np.array(rowids, dtype=np.int64)
        self._main_pos = {r: i for i, r in enumerate(rowids)}
        self._alive = np.ones(len(rowids), dtype=bool)
        self._main_df = Counter(t for doc in corpus for t in set(doc))
        self._main_n = len(rowids)
        self._main_len = sum(len(doc) for doc in corpus)
        self._bm25 = None
        if rowids:
            bm25 = bm25s.BM25(k1=self.k1, b=self.b, method="lucene")
            bm25.index(corpus, show_progress=False)
            self._bm25 = _Main.from_bm25s(bm25)
        self._delta, self._postings, self._delta_len, self._stale = set(), {}, 0, False
        self.rebuilds += 1
        self.last_rebuild_s = time.perf_counter() - start

    # -- snapshot ----------------------------------------------------------------------------
    def state(self) -> dict:
        """This index as plain arrays and objects for the store's snapshot (see snapshot.py)."""
        rowids = list(self._docs) + list(self._packed.pos)
        docs = [self._tokens(r) for r in rowids]
        vocab: dict[str, int] = {}
        lengths = np.fromiter((len(d) for d in docs), dtype=np.int64, count=len(docs))
        ids = np.fromiter((vocab.setdefault(t, len(vocab)) for d in docs for t in d), dtype=np.int32,
                          count=int(lengths.sum()))
        return {"params": (self.k1, self.b, self.merge_min, self.merge_ratio),
                "rowids": np.asarray(rowids, dtype=np.int64), "vocab": list(vocab), "ids": ids,
                "offsets": np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(lengths)]),
                "bm25": self._bm25.state() if self._bm25 is not None else None,
                "main_rowids": self._main_rowids, "alive": self._alive,
                "main_df": self._main_df, "main_n": self._main_n, "main_len": self._main_len,
                "delta": sorted(self._delta), "stale": self._stale}

    @classmethod
    def from_state(cls, state: dict) -> "KeywordIndex":
        """The index `state()` described: main restored as it was, delta postings rebuilt."""
        index = cls(*state["params"])
        vocab = [sys.intern(t) for t in state["vocab"]]
        index._packed = _Packed(vocab, canonical(state["ids"]), canonical(state["offsets"]),
                                dict(zip(state["rowids"].tolist(), range(len(state["rowids"])))))
        index._bm25, index._main_rowids = _Main.from_state(state["bm25"]), canonical(state["main_rowids"])
        index._alive = np.array(state["alive"], dtype=bool)  # written on removes; restored read-only
        index._main_pos = dict(zip(index._main_rowids.tolist(), range(len(index._main_rowids))))
        if not index._alive.all():
            for rowid in index._main_rowids[~index._alive].tolist():
                del index._main_pos[rowid]
        index._main_df, index._main_n, index._main_len = state["main_df"], state["main_n"], state["main_len"]
        for rowid in state["delta"]:  # searches read delta documents' lengths: keep them decoded
            index._add_delta(rowid, index._packed.pop(rowid) or [])
        index._stale = state["stale"]
        return index

    # -- reads -------------------------------------------------------------------------------
    def _delta_scores(self, query_tokens: list[str]) -> dict[int, float]:
        """Lucene BM25 for delta documents with main + delta statistics (the scale bm25s uses)."""
        n = self._main_n + len(self._delta)
        avgdl = (self._main_len + self._delta_len) / max(n, 1)
        out: dict[int, float] = {}
        for token in query_tokens:
            postings = self._postings.get(token)
            if not postings:
                continue
            df = self._main_df.get(token, 0) + len(postings)
            idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
            for rowid, tf in postings.items():
                norm = self.k1 * (1 - self.b + self.b * len(self._docs[rowid]) / max(avgdl, 1e-9))
                out[rowid] = out.get(rowid, 0.0) + idf * tf / (norm + tf)
        return out

    def scores(self, query_tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(row numbers, BM25 scores) of every live document with a positive score."""
        if self._needs_merge():
            self.rebuild()
        rowids, scores = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if self._bm25 is not None and query_tokens:
            main = self._bm25.get_scores(query_tokens)
            hit = np.flatnonzero((main > 0) & self._alive)
            rowids, scores = self._main_rowids[hit], main[hit]
        return self._with_delta(query_tokens, rowids, scores)

    def _with_delta(self, query_tokens: list[str], rowids: np.ndarray, scores: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        delta = self._delta_scores(query_tokens) if query_tokens else {}
        if delta:
            rowids = np.concatenate([rowids, np.fromiter(delta.keys(), dtype=np.int64, count=len(delta))])
            scores = np.concatenate([scores, np.fromiter(delta.values(), dtype=np.float32, count=len(delta))])
        return rowids, scores

    def search(self, query_tokens: list[str], fetch: int, allowed: np.ndarray | None = None
               ) -> list[tuple[int, float]]:
        """Top `fetch` rows by BM25 score, best first: main's best `fetch` (see `_Main.top`)
        and every scoring delta document compete for the places. `allowed`, a `row_mask`,
        keeps only the rows it lets through (a filtered search)."""
        if self._needs_merge():
            self.rebuild()
        rowids, scores = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if self._bm25 is not None and query_tokens and fetch > 0:
            alive = self._alive if allowed is None else self._alive & rows_in(allowed, self._main_rowids)
            positions, scores = self._bm25.top(query_tokens, fetch, alive)
            rowids = self._main_rowids[positions]
        rowids, scores = self._with_delta(query_tokens, rowids, scores)
        if allowed is not None and len(rowids):
            keep = rows_in(allowed, rowids)
            rowids, scores = rowids[keep], scores[keep]
        if len(rowids) > fetch:
            top = np.argpartition(-scores, fetch - 1)[:fetch]
            rowids, scores = rowids[top], scores[top]
        order = np.argsort(-scores, kind="stable")
        return [(int(rowids[i]), float(scores[i])) for i in order]
