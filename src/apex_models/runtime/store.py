"""A local memory store: SQLite is the source of truth, FAISS an in-memory index over it.

Vectors are stored beside their text, so the index can always be rebuilt from the
database (it is, on every open). The store records which embedder made its vectors and
refuses another one: vectors from different models or precisions are not comparable.

All SQL goes through one connection in a few small methods (`add_many`, `delete`,
`_rows_by_rowid`, `_rebuild_index`), so encryption, hybrid (BM25) search and
multi-process locking can be added around them later. One process at a time for now:
the FAISS index lives in memory and does not see another process's writes.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import faiss
import numpy as np

from apex_models.hashing import sha256_file
from apex_models.runtime.embedder import OnnxEmbedder

DB_NAME = "memories.db"
STORE_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS memories (
    id TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    kind TEXT NOT NULL,
    tags TEXT NOT NULL,
    source TEXT,
    created_at TEXT NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS memories_kind ON memories(kind);
"""


class StoreError(Exception):
    """The store cannot be opened or used as asked (e.g. built with another embedder)."""


@dataclass(frozen=True)
class Memory:
    id: str
    text: str
    kind: str
    tags: list[str] = field(default_factory=list)
    source: str | None = None
    created_at: str = ""


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    text: str
    kind: str
    tags: list[str] = field(default_factory=list)
    source: str | None = None


def embedder_identity(embedder: OnnxEmbedder) -> dict[str, str]:
    """What makes vectors comparable: the exact ONNX file (hash), its precision, the tokenizer."""
    return {
        "onnx_sha256": embedder.onnx_sha256,
        "tokenizer_sha256": sha256_file(embedder.tokenizer_path),
        "precision": embedder.precision,
        "dimension": str(embedder.dimension),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _memory_from_row(row: sqlite3.Row) -> Memory:
    return Memory(id=row["id"], text=row["text"], kind=row["kind"], tags=json.loads(row["tags"]),
                  source=row["source"], created_at=row["created_at"])


class MemoryStore:
    """Add, get, delete and semantically search short texts ("memories") in a folder."""

    def __init__(self, path: Path, conn: sqlite3.Connection, embedder: OnnxEmbedder) -> None:
        self.path = path
        self.embedder = embedder
        self._conn = conn
        self._index = faiss.IndexIDMap(faiss.IndexFlatIP(embedder.dimension))
        self._rebuild_index()

    @classmethod
    def open(cls, path: Path, embedder: OnnxEmbedder) -> "MemoryStore":
        """Open or create the store in folder `path`, checking it was built by `embedder`."""
        path = Path(path).expanduser()
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} exists and is not a folder")
        path.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path / DB_NAME))
        conn.row_factory = sqlite3.Row
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
            _check_identity(conn, path, embedder)
        except BaseException:
            conn.close()
            raise
        return cls(path, conn, embedder)

    # -- index -----------------------------------------------------------------------------
    def _rebuild_index(self) -> None:
        """Load every stored vector into FAISS; FAISS ids are SQLite rowids."""
        self._index.reset()
        rows = self._conn.execute("SELECT rowid, vector FROM memories").fetchall()
        if rows:
            ids = np.array([r["rowid"] for r in rows], dtype=np.int64)
            vectors = np.stack([np.frombuffer(r["vector"], dtype=np.float32) for r in rows])
            self._index.add_with_ids(vectors, ids)

    # -- writes ----------------------------------------------------------------------------
    def add(self, text: str, kind: str = "note", tags: Iterable[str] = (), source: str | None = None) -> str:
        return self.add_many([{"text": text, "kind": kind, "tags": list(tags), "source": source}])[0]

    def add_many(self, items: list[dict[str, Any]]) -> list[str]:
        """Embed all texts in one batch and insert them in one transaction."""
        if not items:
            return []
        for i, item in enumerate(items):
            if not isinstance(item.get("text"), str) or not item["text"].strip():
                raise ValueError(f"item {i}: 'text' must be a non-empty string")
        vectors = self.embedder.encode_documents([item["text"] for item in items])
        ids, rowids = [], []
        with self._conn:  # one transaction: all or nothing
            for item, vector in zip(items, vectors):
                memory_id = uuid.uuid4().hex
                cur = self._conn.execute(
                    "INSERT INTO memories (id, text, kind, tags, source, created_at, vector) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (memory_id, item["text"], item.get("kind") or "note",
                     json.dumps(list(item.get("tags") or [])), item.get("source"), _now(),
                     np.ascontiguousarray(vector, dtype=np.float32).tobytes()))
                ids.append(memory_id)
                rowids.append(cur.lastrowid)
        # The index follows only after the commit, so a failed insert leaves it untouched.
        self._index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32),
                                 np.array(rowids, dtype=np.int64))
        return ids

    def delete(self, memory_id: str) -> bool:
        row = self._conn.execute("SELECT rowid FROM memories WHERE id = ?", (memory_id,)).fetchone()
        if row is None:
            return False
        with self._conn:
            self._conn.execute("DELETE FROM memories WHERE id = ?", (memory_id,))
        self._index.remove_ids(np.array([row["rowid"]], dtype=np.int64))
        return True

    # -- reads -----------------------------------------------------------------------------
    def get(self, memory_id: str) -> Memory | None:
        row = self._conn.execute("SELECT * FROM memories WHERE id = ?", (memory_id,)).fetchone()
        return _memory_from_row(row) if row else None

    def search(self, query: str, k: int = 10, kind: str | None = None) -> list[Hit]:
        """Top-k memories by cosine similarity, optionally only of one kind.

        With a kind filter the index is searched for more candidates until k of that kind
        are found or the whole index has been ranked, so rare kinds are never missed.
        """
        total = self._index.ntotal
        if k <= 0 or total == 0:
            return []
        vector = self.embedder.encode_queries([query])
        fetch = min(total, k if kind is None else max(4 * k, 64))
        while True:
            scores, rowids = self._index.search(vector, fetch)
            pairs = [(int(r), float(s)) for r, s in zip(rowids[0], scores[0]) if r != -1]
            rows = self._rows_by_rowid([r for r, _ in pairs])
            hits = [Hit(id=row["id"], score=score, text=row["text"], kind=row["kind"],
                        tags=json.loads(row["tags"]), source=row["source"])
                    for rowid, score in pairs
                    if (row := rows.get(rowid)) is not None and (kind is None or row["kind"] == kind)]
            if len(hits) >= k or fetch >= total:
                return hits[:k]
            fetch = min(total, fetch * 4)

    def _rows_by_rowid(self, rowids: list[int]) -> dict[int, sqlite3.Row]:
        if not rowids:
            return {}
        marks = ",".join("?" * len(rowids))
        rows = self._conn.execute(
            f"SELECT rowid, id, text, kind, tags, source FROM memories WHERE rowid IN ({marks})",
            rowids).fetchall()
        return {r["rowid"]: r for r in rows}

    def stats(self) -> dict[str, Any]:
        kinds = {r["kind"]: r["n"] for r in
                 self._conn.execute("SELECT kind, COUNT(*) AS n FROM memories GROUP BY kind ORDER BY kind")}
        return {"count": len(self), "kinds": kinds, "indexed": int(self._index.ntotal),
                "dimension": self.embedder.dimension, "precision": self.embedder.precision}

    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM memories").fetchone()[0])

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_identity(conn: sqlite3.Connection, path: Path, embedder: OnnxEmbedder) -> None:
    """First open records the embedder; later opens must use the same one."""
    identity = embedder_identity(embedder)
    stored = {r["key"]: r["value"] for r in conn.execute("SELECT key, value FROM meta")}
    if not stored:
        with conn:
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)",
                             [("store_schema_version", str(STORE_SCHEMA_VERSION)),
                              *sorted(identity.items())])
        return
    if stored.get("store_schema_version") != str(STORE_SCHEMA_VERSION):
        raise StoreError(f"store {path} has schema version {stored.get('store_schema_version')}; "
                         f"this runtime supports {STORE_SCHEMA_VERSION}")
    mismatched = [k for k, v in identity.items() if stored.get(k) != v]
    if mismatched:
        details = ", ".join(f"{k}: store {str(stored.get(k))[:12]} vs given {identity[k][:12]}"
                            for k in mismatched)
        raise StoreError(f"store {path} was built with a different embedder ({details}); "
                         "its vectors are not comparable. Use the original bundle and precision, "
                         "or re-embed into a new store.")
