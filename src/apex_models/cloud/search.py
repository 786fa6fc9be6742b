"""Team-scoped hybrid search with the local runtime's semantics, on PostgreSQL plus FAISS.

- keyword: PostgreSQL full text. Each memory's tsvector is built from the runtime's
  code-aware tokens (`readFile` -> read, file), and a query matches any of its tokens
  (OR), ranked by `ts_rank` (length-normalised), through the GIN index.
- dense: pgvector is not installable on the machines this was built on, so the vectors
  live in PostgreSQL (`memories.embedding`) and each server process keeps a FAISS index
  per team beside it (runtime.dense.DenseIndex: exact, HNSW from 20k memories). The
  index follows the change feed: before every search it applies the rows whose
  sequence is above the last one it saw (new, changed, tombstoned), so it is never
  behind PostgreSQL and is rebuilt from it after a restart.
- fusion, filters, near-duplicate collapse: exactly the runtime's (`_rrf`,
  `collapse_near_duplicates`, StoreConfig): filters (kinds, all tags, created in
  [since, until), source prefix) are applied before each list is cut.
- re-ranking: the bundle's ranker (or any `rerank(query, texts) -> scores`) reorders the
  fused head when the server has one; a ranker trained as a correction to the embedder
  (`first_stage_scale`) has the cosines from the team's index added, as in the runtime.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import psycopg

from apex_models.runtime.dense import DenseIndex
from apex_models.runtime.keyword import tokens
from apex_models.runtime.store import (StoreConfig, _rrf, collapse_near_duplicates, query_vector_for, reranker_parts,
                                      with_first_stage)

Reranker = Callable[[str, list[str]], Sequence[float]]  # or an object with `score` (the bundle's OnnxRanker)


@dataclass
class _TeamIndex:
    dense: DenseIndex
    seq: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class SearchEngine:
    """Per-team dense indexes following the feed, and the search itself."""

    def __init__(self, embedder: Any, config: StoreConfig | None = None, rerank: Any = None) -> None:
        self.embedder = embedder
        self.config = config or StoreConfig()
        self.rerank: Reranker | None = None
        self.first_stage_scale = 0.0
        if rerank is not None:
            self.rerank, self.first_stage_scale = reranker_parts(rerank)
        self._teams: dict[uuid.UUID, _TeamIndex] = {}
        self._lock = threading.Lock()

    def _kind(self, count: int) -> str:
        if self.config.dense_index != "auto":
            return self.config.dense_index
        return "hnsw" if count >= self.config.hnsw_threshold else "flat"

    def index(self, conn: psycopg.Connection, team_id: uuid.UUID) -> DenseIndex:
        """The team's dense index, after applying every change above its last sequence."""
        with self._lock:
            team = self._teams.get(team_id)
            if team is None:
                team = self._teams[team_id] = _TeamIndex(DenseIndex(self.embedder.dimension, "flat"))
        with team.lock:
            rows = conn.execute("SELECT num, seq, deleted, embedding FROM memories WHERE team_id = %s AND seq > %s"
                                " ORDER BY seq", (team_id, team.seq)).fetchall()
            if rows:
                live = [r for r in rows if not r["deleted"]]
                for r in rows:
                    if r["deleted"]:
                        team.dense.scrub(r["num"])  # zeroed in FAISS's storage, then dropped
                if live:
                    vectors = np.stack([np.frombuffer(r["embedding"], dtype=np.float32) for r in live])
                    team.dense.add([r["num"] for r in live], vectors)
                team.seq = rows[-1]["seq"]
                wanted = self._kind(team.dense.live)
                if wanted != team.dense.kind:
                    team.dense.compact(kind=wanted)
            return team.dense

    def forget_team(self, team_id: uuid.UUID) -> None:
        with self._lock:
            self._teams.pop(team_id, None)

    def search(self, conn: psycopg.Connection, team_id: uuid.UUID, request: Any) -> list[dict[str, Any]]:
        """The top `request.k` hits as dicts shaped like the runtime's Hit (with `why`)."""
        dense_index = self.index(conn, team_id)
        k, mode = request.k, request.mode
        where, params = _filters(request)
        filtered = bool(where)
        depth = max(self.config.candidates, 2 * k, self.config.candidates if self.rerank else 0)
        dense: list[tuple[int, float]] = []
        vector = None
        if mode != "keyword" and dense_index.live:
            vector = self.embedder.encode_queries([request.query])[0]
            if filtered:
                allowed = [r["num"] for r in conn.execute(
                    f"SELECT num FROM memories WHERE team_id = %s AND NOT deleted AND {' AND '.join(where)}",
                    (team_id, *params)).fetchall()]
                dense = dense_index.search_among(vector, np.asarray(allowed, dtype=np.int64), depth)
            else:
                dense = dense_index.search(vector, depth)
        query_tokens = list(dict.fromkeys(tokens(request.query)))
        keyword: list[tuple[int, float]] = []
        if mode != "dense" and query_tokens:
            tsquery = " | ".join("'" + t.replace("\\", "\\\\").replace("'", "''") + "'" for t in query_tokens)
            extra = (" AND " + " AND ".join(where)) if filtered else ""
            keyword = [(r["num"], float(r["score"])) for r in conn.execute(
                "SELECT num, ts_rank(tsv, q, 1) AS score FROM memories, to_tsquery('english', %s) q"
                f" WHERE team_id = %s AND NOT deleted AND tsv @@ q{extra} ORDER BY score DESC, num LIMIT %s",
                (tsquery, team_id, *params, depth)).fetchall()]
        fused = _rrf([dense, keyword], self.config.rrf_k, (1.0, self.config.keyword_weight))
        rerank_depth = self.config.candidates if self.rerank else 0
        rows = _rows(conn, team_id, [n for n, _ in fused])
        fused = [(n, s) for n, s in fused if n in rows]  # deleted since the index last looked
        fused, _ = collapse_near_duplicates(fused, dense_index, max(k, rerank_depth), self.config.duplicate_cosine)
        rerank_scores: dict[int, float] = {}
        if self.rerank is not None:
            head = fused[:rerank_depth]
            scores = self.rerank(request.query, [rows[n]["text"] for n, _ in head])
            if self.first_stage_scale and head:
                scores = with_first_stage(scores, self.first_stage_scale, dense_index.vectors([n for n, _ in head]),
                                          query_vector_for(self.embedder, request.query, vector))
            rerank_scores = {n: float(s) for (n, _), s in zip(head, scores)}
            fused = sorted(head, key=lambda p: -rerank_scores[p[0]]) + fused[rerank_depth:]
        dense_at = {n: (i + 1, s) for i, (n, s) in enumerate(dense)}
        keyword_at = {n: (i + 1, s) for i, (n, s) in enumerate(keyword)}
        return [_hit(rows[n], rerank_scores.get(n, score), dense_at.get(n), keyword_at.get(n), query_tokens,
                     rerank_scores.get(n)) for n, score in fused[:k]]


def _filters(request: Any) -> tuple[list[str], list[Any]]:
    """SQL conditions (and their parameters) for the runtime's filters."""
    where, params = [], []
    if request.kind:
        where.append("kind = ANY(%s)")
        params.append(list(request.kind))
    if request.tags:
        where.append("tags @> %s")
        params.append(list(request.tags))
    if request.since is not None:
        where.append("created_at >= %s")
        params.append(request.since)
    if request.until is not None:
        where.append("created_at < %s")
        params.append(request.until)
    if request.source_prefix is not None:
        where.append("starts_with(coalesce(source, ''), %s)")
        params.append(request.source_prefix)
    return where, params


def _rows(conn: psycopg.Connection, team_id: uuid.UUID, nums: list[int]) -> dict[int, dict[str, Any]]:
    if not nums:
        return {}
    return {r["num"]: r for r in conn.execute(
        "SELECT num, id, text, kind, tags, source, created_at, updated_at FROM memories"
        " WHERE team_id = %s AND num = ANY(%s) AND NOT deleted", (team_id, nums)).fetchall()}


def _hit(row: dict[str, Any], score: float, dense: tuple[int, float] | None, keyword: tuple[int, float] | None,
         query_tokens: list[str], rerank_score: float | None) -> dict[str, Any]:
    terms = set(tokens(row["text"])) if keyword else set()
    why = {"dense_rank": dense[0] if dense else None, "dense_score": round(dense[1], 6) if dense else None,
           "keyword_rank": keyword[0] if keyword else None,
           "keyword_score": round(keyword[1], 6) if keyword else None,
           "matched_terms": [t for t in query_tokens if t in terms], "rerank_score": rerank_score}
    why["retrievers"] = [name for name, rank in (("dense", why["dense_rank"]), ("keyword", why["keyword_rank"]))
                         if rank is not None]
    return {"id": row["id"], "score": score, "text": row["text"], "kind": row["kind"], "tags": list(row["tags"]),
            "source": row["source"], "created_at": row["created_at"], "updated_at": row["updated_at"], "why": why}
