"""A local, encrypted memory store: SQLite on disk, FAISS and BM25 in memory, safe across processes.

Layout on disk (folder `<store>/`):

- `memories.db` (SQLite, WAL mode, `secure_delete` on): per memory a clear random id, a
  row number, a change sequence, and two AES-256-GCM blobs, `record` (text, kind, tags,
  source, timestamps as JSON) and `vector` (float32 bytes), each bound to the memory id
  by its associated data. Relations hold the two ids and an encrypted label. The meta
  table holds the scrypt salt and parameters, a key-check blob, the embedder identity and
  two counters (`change_counter`, `delete_counter`).
- `write.lock`: a file lock; every write transaction holds it.
- `index.snapshot` (once the store is large enough, see `save_snapshot`): the in-memory
  state (records, FAISS index, BM25 index) sealed with the same key, so an open at 100k
  memories loads it instead of decrypting, tokenising and indexing every row again.

Nothing searchable is stored in the clear: the FAISS and BM25 indexes live in memory,
restored from the sealed snapshot or rebuilt from decrypted rows on open, and kept fresh
on every write. Another process's writes are seen through the change counter: each
search compares it with the last one applied and loads only the rows written since
(`seq > last`), plus a scan of row numbers when something was deleted. An open from a
snapshot catches up the same way from the counter the snapshot was taken at.

The store records which embedder made its vectors and refuses another one: vectors from
different models or precisions are not comparable. One store object may be shared by
threads (its public methods take turns); processes coordinate through the lock file and
the change counter.
"""

from __future__ import annotations

import functools
import gc
import json
import os
import re
import sqlite3
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Protocol

import numpy as np
from filelock import FileLock, Timeout

from apex_models.hashing import sha256_file
from apex_models.runtime.crypto import KEY_BYTES, DecryptionError, KdfParams, Sealer, derive_key
from apex_models.runtime.dense import DenseIndex
from apex_models.runtime.keyword import KeywordIndex, row_mask, tokens
from apex_models.runtime.records import Entry, Records
from apex_models.runtime.snapshot import SNAPSHOT_NAME, SnapshotError, read_snapshot, remove_snapshot, write_snapshot

if TYPE_CHECKING:
    from apex_models.runtime.bundle import Bundle

DB_NAME = "memories.db"
LOCK_NAME = "write.lock"
STORE_SCHEMA_VERSION = 2
KINDS = ("note", "code", "decision", "error")  # common kinds; any non-empty string is accepted
FILTER_CACHE_SIZE = 32   # kind/tag filters whose row numbers are kept until the next write

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS memories (
    num INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    seq INTEGER NOT NULL,
    record BLOB NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS memories_seq ON memories(seq);
CREATE TABLE IF NOT EXISTS relations (
    src TEXT NOT NULL REFERENCES memories(id) ON DELETE CASCADE,
    dst TEXT NOT NULL REFERENCES memories(id) ON DELETE CASCADE,
    label BLOB NOT NULL,
    PRIMARY KEY (src, dst)
);
CREATE INDEX IF NOT EXISTS relations_dst ON relations(dst);
"""

RerankFn = Callable[[str, list[str]], Sequence[float]]
TimeLike = datetime | str | float | int

# How a query's intent shapes a search: (intent label -> {memory kind: boost}). A boosted
# hit's fused score is multiplied by (1 + boost). With RRF's k=60, 0.1 lifts a hit about
# six places near the top of the list and 0.05 about three: enough to favour a kind on a
# close call, never enough to bury a clearly better hit of another kind.
DEFAULT_INTENT_BOOSTS: dict[str, dict[str, float]] = {
    "debug_error": {"error": 0.1},
    "code_search": {"code": 0.1},
    "api_usage": {"code": 0.05},
    "refactor_review": {"code": 0.05},
    "recall_memory": {"decision": 0.1, "note": 0.05},
    "plan_task": {"decision": 0.05},
    "explain_concept": {"note": 0.05},
    "config_setup": {"note": 0.05},
}


class StoreError(Exception):
    """The store cannot be opened or used as asked (wrong key, other embedder, tampering...)."""


class Reranker(Protocol):
    """A cross-encoder (the bundle's ranker): relevance of each text to the query, higher is better.

    One that also has a `first_stage_scale` attribute above 0 (the bundle's ranker, when it
    was trained as a correction to the embedder) has the store add that many times the
    query-memory cosine to its scores; see `MemoryStore.search`."""

    def score(self, query: str, texts: list[str]) -> np.ndarray: ...


class IntentClassifier(Protocol):
    """The bundle's intent model: one (label, confidence) per text, labels from conf/intent/."""

    def classify(self, texts: list[str]) -> list[tuple[str, float]]: ...


class Embedder(Protocol):
    """What the store needs from an embedder (OnnxEmbedder satisfies it)."""

    dimension: int
    precision: str
    tokenizer_path: Path

    @property
    def onnx_sha256(self) -> str: ...

    def encode_queries(self, texts: list[str]) -> np.ndarray: ...

    def encode_documents(self, texts: list[str]) -> np.ndarray: ...


def as_embedder(candidate: Any) -> Embedder:
    """The embedder to open a store with: a bundle gives its own; anything else must have
    the `Embedder` members (`hasattr`, so a wrapper that forwards them through `__getattr__`
    counts), so a wrong argument fails here, not half-way through creating a store."""
    from apex_models.runtime.bundle import Bundle

    if isinstance(candidate, Bundle):
        return candidate.embedder()
    members = dict.fromkeys(n for n in (*Embedder.__annotations__, *vars(Embedder)) if not n.startswith("_"))
    missing = [m for m in members if not hasattr(candidate, m)]
    if missing:
        raise TypeError(f"MemoryStore.open needs a Bundle or an embedder (bundle.embedder(), StaticEmbedder); "
                        f"{type(candidate).__name__} has no {', '.join(missing)}")
    return candidate


@dataclass(frozen=True)
class StoreConfig:
    """Index and locking knobs; the defaults suit up to about a million memories."""

    dense_index: str = "auto"          # auto: flat (exact) below hnsw_threshold memories, else hnsw
    hnsw_threshold: int = 20_000
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int | None = None  # None: 128, from 500k memories 512 (runtime/dense.py: AUTO_EF*)
    hnsw_storage: str = "fp16"         # HNSW vectors as fp16 (half the memory and open time, same recall) or fp32
    candidates: int = 50               # per-retriever depth fed into rank fusion
    rrf_k: int = 60
    # The BM25 list's weight in the fusion (the dense list's is 1). At 1 (plain RRF) keyword hits
    # cost 0.08 MRR@10 on CoSQA test and 0.10 on the Q&A set against dense alone; at 0.1 (chosen
    # on CoSQA dev) a keyword match still lifts a hit within the dense top 8 or so, and hybrid is
    # within 0.02 of dense on CoSQA and above it on Q&A (eval/results/store-relevance.json).
    keyword_weight: float = 0.1
    duplicate_cosine: float = 0.97     # hits closer than this to a better hit are dropped
    rerank_depth: int = 20             # fused hits the reranker re-scores when search(rerank=True)
    # From this many memories a hybrid search scores BM25 on a second thread while the query
    # is embedded (ONNX Runtime and FAISS release the GIL): at 1M memories keyword scoring
    # costs 2-6 ms, as much as the embedding. Below it a thread hand-off costs more than it saves.
    parallel_keyword_min: int = 50_000
    intent_min_confidence: float = 0.5  # below this an intent is reported in `why` but shapes nothing
    intent_boosts: dict[str, dict[str, float]] = field(default_factory=lambda: {
        label: dict(boosts) for label, boosts in DEFAULT_INTENT_BOOSTS.items()})
    lock_timeout_s: float = 60.0
    busy_timeout_ms: int = 60_000
    # close() seals the in-memory indexes into index.snapshot when the store holds at least
    # snapshot_min_memories and more than snapshot_stale_fraction of it changed since the last
    # snapshot (below that, an open rebuilds fast enough: 0.5 s at 10k memories).
    snapshot_min_memories: int = 5_000
    snapshot_stale_fraction: float = 0.01

    def __post_init__(self) -> None:
        if self.keyword_weight < 0:
            raise ValueError(f"keyword_weight must be >= 0 (0: the keyword list only explains), "
                             f"got {self.keyword_weight}")


@dataclass(frozen=True)
class Relation:
    """An edge from this memory (`direction` "out") or to it ("in")."""

    relation: str
    other_id: str
    direction: str = "out"


@dataclass(frozen=True)
class Memory:
    id: str
    text: str
    kind: str
    tags: list[str] = field(default_factory=list)
    source: str | None = None
    created_at: str = ""
    updated_at: str = ""
    relations: list[Relation] = field(default_factory=list)


@dataclass(frozen=True)
class Why:
    """Which retrievers found a hit, and how (ranks are 1-based; None: not in that list)."""

    dense_rank: int | None = None
    dense_score: float | None = None
    keyword_rank: int | None = None
    keyword_score: float | None = None
    matched_terms: list[str] = field(default_factory=list)
    rerank_score: float | None = None   # the reranker's raw score, when one re-scored this hit
    rerank_rank: int | None = None
    intent: str | None = None           # the query's intent, when one was classified or given
    intent_confidence: float | None = None
    intent_boost: float = 0.0           # the boost this hit's kind got from that intent (0: none)
    duplicates: int = 0                 # near-identical memories collapsed into this hit

    @property
    def retrievers(self) -> list[str]:
        return [name for name, rank in (("dense", self.dense_rank), ("keyword", self.keyword_rank))
                if rank is not None]


@dataclass(frozen=True)
class Hit:
    id: str
    score: float                       # what hits are sorted by: see MemoryStore.search
    text: str
    kind: str
    tags: list[str] = field(default_factory=list)
    source: str | None = None
    created_at: str = ""
    updated_at: str = ""
    why: Why = field(default_factory=Why)


@dataclass(frozen=True)
class Related:
    """A memory reached from the start of `related()` at `depth` hops, through `via`."""

    memory: Memory
    relation: str
    direction: str
    depth: int
    via: str


def _entry(num: int, m: Memory) -> Entry:
    return Entry(num, m.id, m.text, m.kind, m.tags, m.source, m.created_at, m.updated_at, _timestamp(m.created_at))


def _memory(e: Entry) -> Memory:
    return Memory(id=e.id, text=e.text, kind=e.kind, tags=list(e.tags), source=e.source,
                  created_at=e.created_at, updated_at=e.updated_at)


def _posting_arrays(postings: dict[str, set[int]]) -> dict[str, np.ndarray]:
    """Kind or tag -> its row numbers, as arrays: a snapshot restores them with one
    `set(array.tolist())` each instead of a Python loop over every memory (about 60 ms of
    an open at 100k memories)."""
    return {key: np.fromiter(nums, dtype=np.int64, count=len(nums)) for key, nums in postings.items() if nums}


def _restore_postings(by_kind: dict[str, np.ndarray] | None, by_tag: dict[str, np.ndarray] | None,
                      records: Records) -> tuple[dict[str, set[int]], dict[str, set[int]]]:
    """The kind and tag postings of a snapshot; rebuilt from the entries when it predates them."""
    if by_kind is not None and by_tag is not None:
        return ({k: set(v.tolist()) for k, v in by_kind.items()}, {t: set(v.tolist()) for t, v in by_tag.items()})
    kinds: dict[str, set[int]] = {}
    tags: dict[str, set[int]] = {}
    for e in records.entries():
        kinds.setdefault(e.kind, set()).add(e.num)
        for tag in e.tags:
            tags.setdefault(tag, set()).add(e.num)
    return kinds, tags


def _serialised(method: Callable) -> Callable:
    """Run a public method under the store's lock: one connection and one set of in-memory
    indexes must not be changed by two threads at once."""
    @functools.wraps(method)
    def wrapper(self: "MemoryStore", *args: Any, **kwargs: Any) -> Any:
        with self._mutex:
            return method(self, *args, **kwargs)
    return wrapper


def embedder_identity(embedder: Embedder) -> dict[str, str]:
    """What makes vectors comparable: the exact ONNX file (hash), its precision, the tokenizer."""
    return {
        "onnx_sha256": embedder.onnx_sha256,
        "tokenizer_sha256": sha256_file(embedder.tokenizer_path),
        "precision": embedder.precision,
        "dimension": str(embedder.dimension),
    }


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def _timestamp(value: TimeLike) -> float:
    """Seconds since the epoch from a datetime, an ISO-8601 string or a number (naive = UTC)."""
    if isinstance(value, (int, float)):
        return float(value)
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _checked_text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}'text' must be a non-empty string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{where}'text' is not valid Unicode ({exc.reason} at {exc.start})") from None
    return value


def _checked_kind(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}'kind' must be a non-empty string")
    return value


def _checked_tags(value: Any, where: str) -> list[str]:
    """A list (or other iterable) of strings; a lone string is refused, not split into letters."""
    if isinstance(value, (str, bytes)):
        raise ValueError(f"{where}'tags' must be a list of strings, not one string (tags=[{value!r}])")
    try:
        tags = list(value)
    except TypeError:
        raise ValueError(f"{where}'tags' must be a list of strings") from None
    if not all(isinstance(t, str) for t in tags):
        raise ValueError(f"{where}'tags' must be a list of strings")
    return tags


def _checked_source(value: Any, where: str) -> str | None:
    """None, a string, or a path (kept as its string: sources are matched by prefix)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise ValueError(f"{where}'source' must be a string or a path, not {type(value).__name__}")


def _checked_id(memory_id: Any) -> str:
    if not isinstance(memory_id, str):
        raise ValueError(f"a memory id is a string, not {type(memory_id).__name__}")
    return memory_id


def _clean_item(i: int, item: dict[str, Any]) -> dict[str, Any]:
    """Validate one memory to add and give every field its default."""
    where = f"item {i}: "
    if not isinstance(item, dict):
        raise ValueError(f"{where}each memory to add is a dict with at least 'text', not {type(item).__name__}")
    text = _checked_text(item.get("text"), where)
    kind = _checked_kind(item.get("kind") or "note", where)
    tags = _checked_tags(item.get("tags") or [], where)
    relations = [(str(rel), str(target)) for rel, target in item.get("relations") or []]
    memory_id = item.get("id")
    if memory_id is not None and (not isinstance(memory_id, str) or not _ID.fullmatch(memory_id)):
        raise ValueError(f"{where}'id' must be 8-64 characters of [A-Za-z0-9_-] (or left out)")
    return {"id": memory_id, "text": text, "kind": kind, "tags": tags,
            "source": _checked_source(item.get("source"), where), "relations": relations}


# Caller-chosen ids (a synced memory keeps the id its first device gave it everywhere).
_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")


def _record_aad(memory_id: str) -> bytes:
    return f"{memory_id}|record".encode()


def _vector_aad(memory_id: str) -> bytes:
    return f"{memory_id}|vector".encode()


def _label_aad(src: str, dst: str) -> bytes:
    return f"{src}|{dst}|relation".encode()


class MemoryStore:
    """Add, update, forget, link and hybrid-search memories in an encrypted folder.

    Open with `MemoryStore.open(path, embedder, passphrase=...)` (or `key=` 32 raw bytes).
    Several processes may open one store: writes are serialised by a file lock and SQLite,
    and every search first applies what other processes committed.
    """

    def __init__(self, path: Path, conn: sqlite3.Connection, embedder: Embedder, sealer: Sealer,
                 config: StoreConfig, reranker: Reranker | None = None,
                 intent: IntentClassifier | None = None, planner: Any = None) -> None:
        self.path = path
        self.embedder = embedder
        self.reranker = reranker
        self.intent = intent
        self.planner = planner
        self.config = config
        self._conn = conn
        self._mutex = threading.RLock()
        self._sealer = sealer
        self._lock = FileLock(str(path / LOCK_NAME), timeout=config.lock_timeout_s)
        self._records = Records()
        self._by_kind: dict[str, set[int]] = {}
        self._by_tag: dict[str, set[int]] = {}
        self._times: tuple[np.ndarray, np.ndarray] | None = None
        self._filters: dict[tuple[tuple[str, ...], tuple[str, ...]], np.ndarray] = {}  # kinds, tags -> rows
        self._keyword_thread: ThreadPoolExecutor | None = None  # see StoreConfig.parallel_keyword_min
        self._dense = DenseIndex(embedder.dimension, self._dense_kind(0), config.hnsw_m,
                                 config.hnsw_ef_construction, config.hnsw_ef_search, config.hnsw_storage)
        self._keyword = KeywordIndex()
        self._seq = 0
        self._deletes = 0
        self._snapshot_seq = -1         # change counter the last snapshot seen here was taken at
        self._snapshot_deletes = 0
        self.opened_from_snapshot = False
        start = time.perf_counter()
        self._load_all()
        self.open_seconds = time.perf_counter() - start

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, embedder: "Embedder | Bundle", *, passphrase: str | None = None,
             key: bytes | None = None, keyring_service: str | None = None, create: bool = True,
             config: StoreConfig | None = None, reranker: Reranker | None = None, intent: IntentClassifier | None = None,
             planner: Any = None) -> "MemoryStore":
        """Open (or, with `create`, make) the store in folder `path`.

        `embedder` is a loaded bundle (its `embedder()` at the default precision) or an
        embedder itself (`bundle.embedder(precision=...)`, a `StaticEmbedder`).
        Exactly one key source is needed: `passphrase` (scrypt-derived key), `key` (32 raw
        bytes) or `keyring_service` (e.g. "apex-memory": a random key kept in the OS keyring
        under that service and the store's path, made when the store is created).
        Fails with StoreError on a wrong key, another embedder, or a tampered row.
        `reranker` (e.g. `bundle.ranker()`) enables `search(rerank=True)`; `intent` (e.g.
        `bundle.intent()`) lets each query's intent shape its search; `planner` (e.g.
        `bundle.planner()`) writes the steps of `plan()`. None is stored: they change how
        this process ranks and plans, never what is on disk.
        """
        if sum(x is not None for x in (passphrase, key, keyring_service)) != 1:
            raise StoreError("give exactly one of passphrase, key or keyring_service to open a memory store")
        embedder = as_embedder(embedder)   # before anything touches the disk
        if passphrase is not None and not passphrase:
            raise ValueError("the passphrase is empty")
        if key is not None and len(key) != KEY_BYTES:
            raise ValueError(f"a raw key must be exactly {KEY_BYTES} bytes")
        path = Path(path).expanduser()
        if keyring_service is not None:
            from apex_models.runtime.keys import keyring_key

            key = keyring_key(path, keyring_service, create=create)
        if path.exists() and not path.is_dir():
            raise StoreError(f"{path} exists and is not a folder")
        if not (path / DB_NAME).is_file():
            if not create:
                raise StoreError(f"no memory store at {path}")
            path.mkdir(parents=True, exist_ok=True)
        config = config or StoreConfig()
        conn = sqlite3.connect(str(path / DB_NAME), isolation_level=None,
                               timeout=config.busy_timeout_ms / 1000, check_same_thread=False)
        try:
            _configure(conn, config)
            meta, sealer = _read_meta(conn), None
            if "key_check" not in meta and not create:  # a database an interrupted create left
                raise StoreError(f"no memory store at {path} (its database was never initialised)")
            if "key_check" not in meta:
                with FileLock(str(path / LOCK_NAME), timeout=config.lock_timeout_s):
                    meta, sealer = _initialise(conn, embedder, passphrase, key)
            if sealer is None:
                sealer = Sealer(key if key is not None
                                else derive_key(passphrase or "", KdfParams.from_json(meta["kdf"])))
            if not sealer.verify_key_check(bytes.fromhex(meta["key_check"])):
                raise StoreError(f"wrong key for store {path}")
            _check_identity(meta, path, embedder)
            return cls(path, conn, embedder, sealer, config, reranker=reranker, intent=intent, planner=planner)
        except BaseException:
            conn.close()
            raise

    def _dense_kind(self, count: int) -> str:
        if self.config.dense_index != "auto":
            return self.config.dense_index
        return "hnsw" if count >= self.config.hnsw_threshold else "flat"

    def _load_all(self) -> None:
        """Restore the snapshot and catch up, or decrypt every row and build both indexes
        (the open cost: see `open_seconds`)."""
        with self._read():
            meta = _read_meta(self._conn)
            if self._restore_snapshot(meta.get("snapshot_token")):
                self._catch_up()
                return
            rows = self._conn.execute("SELECT num, id, record, vector FROM memories ORDER BY num").fetchall()
        self._dense = DenseIndex(self.embedder.dimension, self._dense_kind(len(rows)), self.config.hnsw_m,
                                 self.config.hnsw_ef_construction, self.config.hnsw_ef_search,
                                 self.config.hnsw_storage)
        self._apply_rows(rows, bulk=True)
        self._seq, self._deletes = int(meta["change_counter"]), int(meta["delete_counter"])

    # -- snapshot ----------------------------------------------------------------------------
    def _restore_snapshot(self, token: str | None) -> bool:
        """Load the sealed in-memory state when the database names it; False: open the slow way."""
        if not token or not (self.path / SNAPSHOT_NAME).is_file():  # none yet, or removed by forget()
            return False
        collecting = gc.isenabled()
        gc.disable()  # an older snapshot's 100k tuples would trigger full collections over everything loaded
        try:
            state = read_snapshot(self.path, self._sealer, token)
            # FAISS parses its 100 MB (at 100k memories) without the GIL, so it runs beside
            # the Python work of restoring the rest: about 30 ms off a warm open at 100k.
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="apex-restore") as beside:
                parsing = beside.submit(DenseIndex.from_state, state["dense"], self.config.hnsw_ef_search)
                try:
                    records = Records.from_columns(state["entries"])
                    keyword = KeywordIndex.from_state(state["keyword"])
                    by_kind, by_tag = _restore_postings(state.get("by_kind"), state.get("by_tag"), records)
                finally:
                    dense = parsing.result()
        except (SnapshotError, KeyError, ValueError, TypeError) as exc:
            warnings.warn(f"index snapshot of {self.path} not used ({exc}); rebuilding from the rows",
                          stacklevel=4)
            return False
        finally:
            if collecting:
                gc.enable()
        self._records, self._dense, self._keyword = records, dense, keyword
        self._by_kind, self._by_tag = by_kind, by_tag
        self._filters.clear()
        self._seq, self._deletes = state["seq"], state["deletes"]
        self._snapshot_seq, self._snapshot_deletes = self._seq, self._deletes
        self.opened_from_snapshot = True
        return True

    def _state(self) -> dict[str, Any]:
        """The in-memory state for a snapshot, holding nothing of a removed memory.

        A removed row's vector stays in FAISS as a dead position and its words in the BM25
        vocabulary until the next rebuild; the dead vectors are zeroed and a keyword index
        holding removed documents (or due a merge) is rebuilt first, so a forgotten memory
        is not written out again by a process that merely saw it go.
        """
        self._dense.zero_dead()
        self._keyword.settle()
        return {"seq": self._seq, "deletes": self._deletes, "entries": self._records.columns(),
                "dense": self._dense.state(), "keyword": self._keyword.state(),
                "by_kind": _posting_arrays(self._by_kind), "by_tag": _posting_arrays(self._by_tag)}

    @_serialised
    def save_snapshot(self) -> int:
        """Seal the in-memory indexes into index.snapshot now; returns the file's size in bytes.

        close() calls this by itself once enough changed (StoreConfig.snapshot_*). The write
        lock is held throughout, so no write or forget slips between the state captured and
        the token published with it; the file is replaced atomically.
        """
        return self._save_snapshot(wait=True)

    def _save_snapshot(self, wait: bool) -> int:
        with self._locked(wait=wait):
            self._catch_up()
            token = uuid.uuid4().hex
            size = write_snapshot(self.path, self._sealer, token, self._state())
            self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('snapshot_token', ?)", (token,))
        self._snapshot_seq, self._snapshot_deletes = self._seq, self._deletes
        return size

    def _snapshot_due(self) -> bool:
        count = len(self._records)
        if count < self.config.snapshot_min_memories:
            return False
        changed = self._conn.execute("SELECT COUNT(*) FROM memories WHERE seq > ?",
                                     (self._snapshot_seq,)).fetchone()[0]
        changed += self._deletes - self._snapshot_deletes
        return changed > self.config.snapshot_stale_fraction * count

    # -- crypto ------------------------------------------------------------------------------
    def _seal_memory(self, memory: Memory) -> bytes:
        record = {"text": memory.text, "kind": memory.kind, "tags": memory.tags, "source": memory.source,
                  "created_at": memory.created_at, "updated_at": memory.updated_at}
        return self._sealer.seal(json.dumps(record).encode("utf-8"), _record_aad(memory.id))

    def _open_memory(self, memory_id: str, blob: bytes) -> Memory:
        try:
            record = json.loads(self._sealer.open(blob, _record_aad(memory_id)))
        except DecryptionError:
            raise StoreError(f"memory {memory_id} in {self.path} failed authentication "
                             "(tampered, or moved from another row)") from None
        return Memory(id=memory_id, text=record["text"], kind=record["kind"], tags=record["tags"],
                      source=record["source"], created_at=record["created_at"], updated_at=record["updated_at"])

    def _open_vector(self, memory_id: str, blob: bytes) -> np.ndarray:
        try:
            raw = self._sealer.open(blob, _vector_aad(memory_id))
        except DecryptionError:
            raise StoreError(f"vector of memory {memory_id} in {self.path} failed authentication") from None
        return np.frombuffer(raw, dtype=np.float32)

    def seal_blob(self, plaintext: bytes, context: str) -> bytes:
        """Encrypt bytes with this store's key for a companion file (a sync outbox, a cache).

        `context` binds the blob to where it is kept (it becomes the associated data, in a
        namespace no memory row uses), so a blob moved elsewhere fails to open.
        """
        return self._sealer.seal(plaintext, f"ext|{context}".encode())

    def open_blob(self, blob: bytes, context: str) -> bytes:
        """Decrypt what `seal_blob` sealed under the same context; StoreError if tampered."""
        try:
            return self._sealer.open(blob, f"ext|{context}".encode())
        except DecryptionError:
            raise StoreError(f"a sealed blob ({context}) failed authentication") from None

    # -- transactions and freshness ------------------------------------------------------------
    def _check_open(self) -> None:
        if self._conn is None:
            raise StoreError(f"the store at {self.path} is closed")

    @contextmanager
    def _read(self) -> Iterator[None]:
        """One snapshot for several SELECTs (WAL readers never block the writer)."""
        self._check_open()
        if self._conn.in_transaction:
            yield
            return
        self._conn.execute("BEGIN")
        try:
            yield
        finally:
            self._conn.execute("COMMIT")

    @contextmanager
    def _locked(self, wait: bool = True) -> Iterator[None]:
        """Lock file + BEGIN IMMEDIATE, committed when the block succeeds, else rolled back.

        `wait=False` gives up at once (StoreError) when another process holds the lock.
        """
        self._check_open()
        try:
            self._lock.acquire(timeout=None if wait else 0)
        except Timeout:
            waited = f"waited {self.config.lock_timeout_s:.0f} s" if wait else "did not wait"
            raise StoreError(f"store {self.path} is locked by another writer ({waited})") from None
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        finally:
            self._lock.release()

    @contextmanager
    def _write(self, deleting: bool = False) -> Iterator[int]:
        """Lock file + BEGIN IMMEDIATE; catch up with other writers; yield this write's sequence.

        The caller applies its own changes to the in-memory indexes only after the commit,
        so a failed transaction leaves them as they were.
        """
        with self._locked():
            self._catch_up()
            seq = self._seq + 1
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'change_counter'", (str(seq),))
            if deleting:
                self._conn.execute("UPDATE meta SET value = ? WHERE key = 'delete_counter'",
                                   (str(self._deletes + 1),))
            yield seq
        self._seq = seq
        self._deletes += int(deleting)

    @_serialised
    def refresh(self) -> bool:
        """Apply what other processes committed since the last look; True when anything changed."""
        with self._read():
            return self._catch_up()

    def _catch_up(self) -> bool:
        meta = dict(self._conn.execute(
            "SELECT key, value FROM meta WHERE key IN ('change_counter', 'delete_counter')").fetchall())
        counter, deletes = int(meta["change_counter"]), int(meta["delete_counter"])
        if counter == self._seq:
            return False
        rows = self._conn.execute("SELECT num, id, record, vector FROM memories WHERE seq > ? ORDER BY num",
                                  (self._seq,)).fetchall()
        self._apply_rows(rows)
        if deletes != self._deletes:
            present = np.fromiter((r[0] for r in self._conn.execute("SELECT num FROM memories")), dtype=np.int64)
            nums = self._records.nums()
            self._drop(nums[~np.isin(nums, present)].tolist())
        self._seq, self._deletes = counter, deletes
        return True

    def _apply_rows(self, rows: list[tuple[int, str, bytes, bytes]], bulk: bool = False) -> None:
        """Decrypt rows and put them (new or changed) into the cache and both indexes."""
        if not rows:
            return
        nums, vectors = [], []
        for num, memory_id, record, vector in rows:
            memory = self._open_memory(memory_id, record)
            self._remember(num, memory, bulk)
            nums.append(num)
            vectors.append(self._open_vector(memory_id, vector))
        self._dense.add(nums, np.stack(vectors))
        self._maybe_switch_index()

    def _remember(self, num: int, memory: Memory, bulk: bool = False) -> None:
        self._unindex_metadata(self._records.put(_entry(num, memory)))
        self._by_kind.setdefault(memory.kind, set()).add(num)
        for tag in memory.tags:
            self._by_tag.setdefault(tag, set()).add(num)
        if bulk:
            self._keyword.load(num, memory.text)
        else:
            self._keyword.add(num, memory.text)

    def _unindex_metadata(self, entry: Entry | None) -> None:
        """Forget the kind and tag postings of a record that changed or went (and the
        filters cached from them)."""
        self._times = None
        self._filters.clear()
        if entry is None:
            return
        self._by_kind.get(entry.kind, set()).discard(entry.num)
        for tag in entry.tags:
            self._by_tag.get(tag, set()).discard(entry.num)

    def _drop(self, nums: list[int]) -> None:
        for num in nums:
            self._unindex_metadata(self._records.pop(num))
            self._keyword.remove(num)
        self._dense.remove(nums)

    def _maybe_switch_index(self) -> None:
        """Exact search while it is fast; HNSW once the store outgrows `hnsw_threshold`."""
        wanted = self._dense_kind(self._dense.live)
        if wanted != self._dense.kind:
            self._dense.compact(kind=wanted)

    # -- writes ------------------------------------------------------------------------------
    def add(self, text: str, kind: str = "note", tags: Iterable[str] = (), source: str | None = None,
            relations: Iterable[tuple[str, str]] = ()) -> str:
        """Store one memory; `relations` are (relation, other memory id) edges from it. Returns its id."""
        return self.add_many([{"text": text, "kind": kind, "tags": tags, "source": source,
                               "relations": list(relations)}])[0]

    @_serialised
    def add_many(self, items: list[dict[str, Any]], vectors: np.ndarray | None = None) -> list[str]:
        """Embed all texts in one batch and insert them in one transaction (all or nothing).

        Each item: text (required), kind, tags, source, relations [(relation, id)], and
        optionally id (else a random one; an id already in the store fails the whole batch).
        `vectors` (unit float32, one per item, from this store's embedder) skips embedding,
        e.g. when importing or benchmarking.
        """
        if not items:
            return []
        clean = [_clean_item(i, item) for i, item in enumerate(items)]
        if vectors is None:
            vectors = self.embedder.encode_documents([c["text"] for c in clean])
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(clean), self.embedder.dimension):
            raise ValueError(f"vectors must have shape ({len(clean)}, {self.embedder.dimension})")
        now = _now()
        memories = [Memory(id=c["id"] or uuid.uuid4().hex, text=c["text"], kind=c["kind"], tags=c["tags"],
                           source=c["source"], created_at=now, updated_at=now) for c in clean]
        sealed = [(m.id, self._seal_memory(m), self._sealer.seal(v.tobytes(), _vector_aad(m.id)))
                  for m, v in zip(memories, vectors)]
        ids = [m.id for m in memories]
        if len(set(ids)) != len(ids):
            raise ValueError("two items in one batch have the same id")
        nums = []
        with self._write() as seq:
            taken = [i for i in ids if self._conn.execute("SELECT 1 FROM memories WHERE id = ?", (i,)).fetchone()]
            if taken:
                raise StoreError(f"memory id {taken[0]} is already in the store")
            for memory_id, record, vector in sealed:
                cur = self._conn.execute("INSERT INTO memories (id, seq, record, vector) VALUES (?, ?, ?, ?)",
                                         (memory_id, seq, record, vector))
                nums.append(cur.lastrowid)
            for memory, c in zip(memories, clean):
                for relation, target in c["relations"]:
                    self._insert_relation(memory.id, target, relation)
        for num, memory in zip(nums, memories):
            self._remember(num, memory)
        self._dense.add(nums, vectors)
        self._maybe_switch_index()
        return [m.id for m in memories]

    @_serialised
    def update(self, memory_id: str, text: str | None = None, kind: str | None = None,
               tags: Iterable[str] | None = None, source: str | None = None) -> Memory | None:
        """Change fields of a memory (a new text is re-embedded); None when there is no such memory.
        A field left None is unchanged; each given one is checked as `add` checks it."""
        _checked_id(memory_id)
        text = None if text is None else _checked_text(text, "")
        kind = None if kind is None else _checked_kind(kind, "")
        tags = None if tags is None else _checked_tags(tags, "")
        source = _checked_source(source, "")
        new_vector = self.embedder.encode_documents([text])[0] if text is not None else None
        with self._write() as seq:
            row = self._conn.execute("SELECT num, record, vector FROM memories WHERE id = ?",
                                     (memory_id,)).fetchone()
            if row is None:
                return None
            num, old = row[0], self._open_memory(memory_id, row[1])
            memory = Memory(id=memory_id, text=text if text is not None else old.text,
                            kind=kind or old.kind, tags=tags if tags is not None else old.tags,
                            source=source if source is not None else old.source,
                            created_at=old.created_at, updated_at=_now())
            vector = self._open_vector(memory_id, row[2]) if new_vector is None else new_vector
            sealed_vector = row[2] if new_vector is None else self._sealer.seal(
                np.ascontiguousarray(new_vector, dtype=np.float32).tobytes(), _vector_aad(memory_id))
            self._conn.execute("UPDATE memories SET seq = ?, record = ?, vector = ? WHERE num = ?",
                               (seq, self._seal_memory(memory), sealed_vector, num))
        self._remember(num, memory)
        if new_vector is not None:
            self._dense.add([num], vector.reshape(1, -1))
        return self.get(memory_id)

    def delete(self, memory_id: str) -> bool:
        """Remove a memory and its relations (its bytes are zeroed in the database pages)."""
        return self._delete(memory_id, scrub=False)

    @_serialised
    def delete_many(self, memory_ids: list[str]) -> int:
        """Remove several memories in one transaction; returns how many existed."""
        memory_ids = [_checked_id(i) for i in memory_ids]
        if not memory_ids:
            return 0
        with self._write(deleting=True):
            removed = sum(self._conn.execute("DELETE FROM memories WHERE id = ?", (i,)).rowcount
                          for i in memory_ids)
        self._drop([n for n in map(self._records.num_of, memory_ids) if n is not None])
        return removed

    @_serialised
    def _delete(self, memory_id: str, scrub: bool) -> bool:
        _checked_id(memory_id)
        with self._write(deleting=True):
            cur = self._conn.execute("DELETE FROM memories WHERE id = ?", (memory_id,))
        num = self._records.num_of(memory_id)
        if num is not None:
            if scrub:  # the in-process indexes keep no copy either
                self._dense.scrub(num)
                self._keyword.forget(num)
            self._drop([num])
        return cur.rowcount > 0

    @_serialised
    def forget(self, memory_id: str, checkpoint_wait_s: float = 10.0) -> bool:
        """Erase a memory with no trace on disk: delete (secure_delete zeroes its pages), then
        checkpoint the WAL into the database and truncate it, so no old frame still holds it.

        In this process its vector is zeroed inside FAISS and the BM25 vocabulary is rebuilt
        at the next search (Python cannot promise to wipe freed string memory).
        Waits up to `checkpoint_wait_s` for readers in other processes to let the checkpoint
        finish; raises StoreError if they never do (the row is deleted either way).
        """
        found = self._delete(memory_id, scrub=True)
        remove_snapshot(self.path)  # it may hold the memory (sealed); the next one will not
        deadline = time.monotonic() + checkpoint_wait_s
        while True:
            busy, _, _ = self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return found
            if time.monotonic() > deadline:
                raise StoreError(f"memory {memory_id} was deleted but the WAL of {self.path} could not be "
                                 "truncated: another process kept reading; run forget again")
            time.sleep(0.05)

    @_serialised
    def link(self, src: str, dst: str, relation: str = "related") -> None:
        """Record (or relabel) the edge src -relation-> dst; both memories must exist."""
        if not relation:
            raise ValueError("relation must be a non-empty string")
        with self._write():
            self._insert_relation(src, dst, relation)

    @_serialised
    def link_many(self, edges: Iterable[tuple[str, str, str]]) -> int:
        """Record many (src, dst, relation) edges in one transaction (all or nothing); returns how many."""
        edges = list(edges)
        if any(not relation for _, _, relation in edges):
            raise ValueError("relation must be a non-empty string")
        if not edges:
            return 0
        with self._write():
            for src, dst, relation in edges:
                self._insert_relation(src, dst, relation)
        return len(edges)

    @_serialised
    def unlink(self, src: str, dst: str) -> bool:
        with self._write():
            cur = self._conn.execute("DELETE FROM relations WHERE src = ? AND dst = ?", (src, dst))
        return cur.rowcount > 0

    def _insert_relation(self, src: str, dst: str, relation: str) -> None:
        for memory_id in (src, dst):
            if self._conn.execute("SELECT 1 FROM memories WHERE id = ?", (memory_id,)).fetchone() is None:
                raise StoreError(f"cannot link: no memory {memory_id}")
        self._conn.execute("INSERT OR REPLACE INTO relations (src, dst, label) VALUES (?, ?, ?)",
                           (src, dst, self._sealer.seal(relation.encode("utf-8"), _label_aad(src, dst))))

    # -- reads -------------------------------------------------------------------------------
    @_serialised
    def get(self, memory_id: str) -> Memory | None:
        """The memory as committed now (read from disk), with its relations both ways."""
        with self._read():
            row = self._conn.execute("SELECT record FROM memories WHERE id = ?", (memory_id,)).fetchone()
            if row is None:
                return None
            memory = self._open_memory(memory_id, row[0])
            relations = self._edges(memory_id)
        return Memory(**{**memory.__dict__, "relations": relations})

    @_serialised
    def vector(self, memory_id: str) -> np.ndarray | None:
        """The stored (decrypted) vector of a memory, read from disk; None when there is none."""
        row = self._conn.execute("SELECT vector FROM memories WHERE id = ?", (memory_id,)).fetchone()
        return None if row is None else self._open_vector(memory_id, row[0]).copy()

    @_serialised
    def indexed_vectors(self, memory_ids: list[str]) -> list[np.ndarray | None]:
        """The dense index's vectors of these memories, from memory (no disk read, unlike
        :meth:`vector`); None for an id the index does not hold."""
        self.refresh()
        out: list[np.ndarray | None] = []
        for memory_id in memory_ids:
            num = self._records.num_of(memory_id)
            try:
                out.append(None if num is None else self._dense.vectors([num])[0])
            except KeyError:
                out.append(None)
        return out

    def _edges(self, memory_id: str) -> list[Relation]:
        edges = []
        for src, dst, label in self._conn.execute(
                "SELECT src, dst, label FROM relations WHERE src = ? OR dst = ? ORDER BY rowid",
                (memory_id, memory_id)):
            try:
                relation = self._sealer.open(label, _label_aad(src, dst)).decode("utf-8")
            except DecryptionError:
                raise StoreError(f"relation {src} -> {dst} in {self.path} failed authentication") from None
            out = src == memory_id
            edges.append(Relation(relation=relation, other_id=dst if out else src,
                                  direction="out" if out else "in"))
        return edges

    @_serialised
    def related(self, memory_id: str, depth: int = 1) -> list[Related]:
        """Memories reachable within `depth` hops over relations in either direction, nearest first."""
        seen, frontier, out = {memory_id}, [memory_id], []
        with self._read():
            for hop in range(1, depth + 1):
                nxt = []
                for current in frontier:
                    for edge in self._edges(current):
                        if edge.other_id in seen:
                            continue
                        seen.add(edge.other_id)
                        row = self._conn.execute("SELECT record FROM memories WHERE id = ?",
                                                 (edge.other_id,)).fetchone()
                        if row is None:
                            continue
                        out.append(Related(memory=self._open_memory(edge.other_id, row[0]), relation=edge.relation,
                                           direction=edge.direction, depth=hop, via=current))
                        nxt.append(edge.other_id)
                frontier = nxt
        return out

    @_serialised
    def memories(self) -> list[Memory]:
        """Every memory (fresh), oldest first: what `apex memory export` writes."""
        self.refresh()
        return [_memory(e) for e in self._records.entries()]

    @_serialised
    def classify_intent(self, query: str) -> tuple[str, float]:
        """The query's intent label and confidence from the intent model given at open."""
        if self.intent is None:
            raise StoreError("this store was opened without an intent model: "
                             "MemoryStore.open(..., intent=bundle.intent())")
        label, confidence = self.intent.classify([query])[0]
        return str(label), float(confidence)

    @_serialised
    def search(self, query: str, k: int = 10, *, kind: str | Sequence[str] | None = None,
               tags: Sequence[str] | None = None, since: TimeLike | None = None, until: TimeLike | None = None,
               source_prefix: str | None = None, mode: str = "hybrid", rerank: bool | int | RerankFn = False,
               rerank_depth: int | None = None, intent: bool | str | None = None,
               collapse: bool = True, query_vector: np.ndarray | None = None) -> list[Hit]:
        """Top-k memories for `query`: dense (cosine) and keyword (BM25) lists fused by RRF.

        `query_vector` (this store's embedder's `encode_queries([query])[0]`) skips embedding
        the query, for a caller that searches several stores with one query.

        Filters (kind(s), all of `tags`, created in [since, until), source path prefix) are
        applied before each list is cut; since/until are datetimes, ISO-8601 strings or epoch
        seconds, and a datetime or string without a time zone is read as UTC, not local time; `mode` "dense" or "keyword" uses one retriever only.
        Then, in this order:

        1. intent shaping: `intent=None` classifies the query when the store has an intent
           model (True demands one, False skips it, a label string is taken as given); when
           the confidence reaches config.intent_min_confidence, each hit whose kind the
           label favours (config.intent_boosts) has its fused score multiplied by (1 + boost);
        2. near-duplicate collapse: a hit closer than config.duplicate_cosine to a better one
           is dropped and counted in the better one's `why.duplicates`;
        3. re-ranking: `rerank=True` re-scores the top config.rerank_depth (an int: that
           many) with the store's reranker; a callable `(query, texts) -> scores` is used
           instead of it. A reranker with a `first_stage_scale` (the bundle's ranker,
           trained as a correction to the embedder) scores each memory as its logit plus
           that scale times the query-memory cosine. The head is then ordered by
           (1 + boost) / (rrf_k + reranker rank), so the intent still counts, and the
           reranker's score is in `why.rerank_score`.

        `Hit.score` is the number hits are sorted by; every step above is visible in `Hit.why`.
        A blank query is a ValueError, as a blank memory or goal is: its nearest vectors would be
        arbitrary hits.
        """
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the query is empty")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ValueError(f"k must be an integer, not {k!r}")
        if mode not in ("hybrid", "dense", "keyword"):
            raise ValueError(f"mode must be hybrid, dense or keyword, not {mode!r}")
        scorer, head_size, first_stage_scale = self._reranker_for(rerank, rerank_depth)
        label, confidence, boosts = self._intent_for(query, intent)
        self.refresh()
        if k <= 0 or not len(self._records):
            return []
        allowed = self._allowed(kind, tags, since, until, source_prefix)
        if allowed is not None and len(allowed) == 0:
            return []
        depth = max(self.config.candidates, 2 * k, head_size)
        query_tokens = list(dict.fromkeys(tokens(query)))
        beside: Future | None = None  # keyword scoring on the second thread while the query embeds
        if mode == "hybrid" and query_vector is None and len(self._records) >= self.config.parallel_keyword_min:
            if self._keyword_thread is None:
                self._keyword_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apex-keyword")
            beside = self._keyword_thread.submit(self._keyword_candidates, query_tokens, depth, allowed)
        try:
            if mode != "keyword":
                query_vector = query_vector_for(self.embedder, query, query_vector)
            dense = self._dense_candidates(query_vector, depth, allowed) if mode != "keyword" else []
        except BaseException:
            if beside is not None:
                wait([beside])  # never leave it reading the indexes after this call returns
            raise
        if beside is not None:
            keyword = beside.result()
        else:
            keyword = self._keyword_candidates(query_tokens, depth, allowed) if mode != "dense" else []
        fused = _rrf([dense, keyword], self.config.rrf_k, (1.0, self.config.keyword_weight))
        boost_of = {n: boosts.get(self._records.kind(n), 0.0) for n, _ in fused} if boosts else {}
        if boost_of:
            fused = sorted(((n, s * (1 + boost_of[n])) for n, s in fused), key=lambda p: -p[1])
        duplicates: dict[int, int] = {}
        if collapse:
            fused, duplicates = self._collapse(fused, max(k, head_size))
        rerank_at: dict[int, tuple[int, float]] = {}
        if scorer is not None:
            head = fused[:head_size]
            raw = np.asarray(scorer(query, [self._records.text(n) for n, _ in head]), dtype=np.float64)
            if raw.shape != (len(head),):
                raise StoreError(f"the reranker returned {raw.shape[0] if raw.ndim else 'no'} scores "
                                 f"for {len(head)} texts")
            if first_stage_scale and head:
                raw = with_first_stage(raw, first_stage_scale, self._dense.vectors([n for n, _ in head]),
                                       query_vector_for(self.embedder, query, query_vector))
            order = np.argsort(-raw, kind="stable")
            rerank_at = {head[i][0]: (rank, float(raw[i])) for rank, i in enumerate(order.tolist(), start=1)}
            reranked = [(n, (1 + boost_of.get(n, 0.0)) / (self.config.rrf_k + rerank_at[n][0])) for n, _ in head]
            fused = sorted(reranked, key=lambda p: -p[1]) + fused[head_size:]
        dense_at = {n: (i + 1, s) for i, (n, s) in enumerate(dense)}
        keyword_at = {n: (i + 1, s) for i, (n, s) in enumerate(keyword)}
        shaping = {"intent": label, "intent_confidence": confidence}
        return [self._hit(n, score, dense_at.get(n), keyword_at.get(n), query_tokens, rerank_at.get(n),
                          shaping, boost_of.get(n, 0.0), duplicates.get(n, 0)) for n, score in fused[:k]]

    def plan(self, goal: str, planner: Any = None, k: int = 5, min_similarity: float = 0.4) -> Any:
        """Steps for `goal` and the `k` memories that bear on it (a `Plan`, see runtime/planning.py):
        from `planner.plan(goal, context_texts)` when one is given here or at open, else from
        the closest memory of kind "procedure" when its cosine to the goal reaches `min_similarity`."""
        from apex_models.runtime.planning import plan

        return plan(self, goal, planner=planner or self.planner, k=k, min_similarity=min_similarity)

    def _reranker_for(self, rerank: bool | int | RerankFn, depth: int | None
                      ) -> tuple[RerankFn | None, int, float]:
        """(scoring function, head size, weight of the first-stage cosine) for a search's
        `rerank` argument; (None, 0, 0.0) when off."""
        if rerank is False or rerank is None or (isinstance(rerank, int) and rerank == 0):  # 0: off, as in the CLI
            return None, 0, 0.0
        if hasattr(rerank, "score") or callable(rerank):  # a Reranker or a function, for this search only
            fn, scale = reranker_parts(rerank)
            return fn, depth or self.config.rerank_depth, scale
        if rerank is True or isinstance(rerank, int):
            size = self.config.rerank_depth if rerank is True else int(rerank)
            if size < 0:
                raise ValueError(f"rerank must be True, a head size (0: off) or a function, not {rerank!r}")
            if self.reranker is None:
                raise StoreError("this store was opened without a reranker: "
                                 "MemoryStore.open(..., reranker=bundle.ranker())")
            fn, scale = reranker_parts(self.reranker)
            return fn, depth or size, scale
        raise ValueError(f"rerank must be True, a head size (0: off) or a function, not {rerank!r}")

    def _intent_for(self, query: str, intent: bool | str | None
                    ) -> tuple[str | None, float | None, dict[str, float]]:
        """(label, confidence, kind boosts) for a search's `intent` argument."""
        if intent is False or (intent is None and self.intent is None):
            return None, None, {}
        if isinstance(intent, str):
            label, confidence = intent, 1.0
        else:
            label, confidence = self.classify_intent(query)
        if confidence < self.config.intent_min_confidence:
            return label, confidence, {}
        return label, confidence, dict(self.config.intent_boosts.get(label, {}))

    def _allowed(self, kind: str | Sequence[str] | None, tags: Sequence[str] | None, since: TimeLike | None,
                 until: TimeLike | None, source_prefix: str | None) -> np.ndarray | None:
        """Sorted row numbers that pass every filter, or None when nothing is filtered.

        Kinds and tags come from in-memory postings (set operations), times and source
        prefixes from the records' columns (numpy), so a filter costs little even at 1M
        memories.
        """
        kinds = [kind] if isinstance(kind, str) else list(kind or [])
        allowed = self._kind_tag_rows(kinds, list(tags or ())) if kinds or tags else None
        if since is not None or until is not None:
            nums, created = self._time_column()
            mask = np.ones(len(nums), dtype=bool)
            if since is not None:
                mask &= created >= _timestamp(since)
            if until is not None:
                mask &= created < _timestamp(until)
            timed = nums[mask]
            allowed = timed if allowed is None else np.intersect1d(allowed, timed, assume_unique=True)
        if source_prefix is not None:
            sourced = self._records.with_source_prefix(source_prefix)
            allowed = sourced if allowed is None else np.intersect1d(allowed, sourced, assume_unique=True)
        return allowed

    def _kind_tag_rows(self, kinds: list[str], tags: list[str]) -> np.ndarray:
        """Sorted row numbers of any of `kinds` with every one of `tags`, kept until the next
        write: at 1M memories one kind's 250k rows cost 20 ms to gather and sort, and an
        application tends to search with the same few filters again and again."""
        key = (tuple(sorted(set(kinds))), tuple(sorted(set(tags))))
        rows = self._filters.get(key)
        if rows is None:
            sets = [set().union(*(self._by_kind.get(k, set()) for k in key[0]))] if kinds else []
            sets += [self._by_tag.get(t, set()) for t in key[1]]
            sets.sort(key=len)
            rows = np.fromiter(sets[0].intersection(*sets[1:]), dtype=np.int64)
            rows.sort()
            rows.flags.writeable = False
            if len(self._filters) >= FILTER_CACHE_SIZE:
                self._filters.pop(next(iter(self._filters)))
            self._filters[key] = rows
        return rows

    def _time_column(self) -> tuple[np.ndarray, np.ndarray]:
        """(row numbers, creation times) as arrays; rebuilt after writes, on the first time filter."""
        if self._times is None:
            self._times = self._records.created()
        return self._times

    def _dense_candidates(self, vector: np.ndarray, depth: int, allowed: np.ndarray | None
                          ) -> list[tuple[int, float]]:
        """Dense list; with a filter, the best of the allowed rows (see DenseIndex.search_among)."""
        vector = np.asarray(vector, dtype=np.float32)
        if allowed is None:
            return self._dense.search(vector, depth)
        return self._dense.search_among(vector, allowed, depth)

    def _keyword_candidates(self, query_tokens: list[str], depth: int, allowed: np.ndarray | None
                            ) -> list[tuple[int, float]]:
        return self._keyword.search(query_tokens, depth, row_mask(allowed) if allowed is not None else None)

    def _collapse(self, fused: list[tuple[int, float]], need: int
                  ) -> tuple[list[tuple[int, float]], dict[int, int]]:
        return collapse_near_duplicates(fused, self._dense, need, self.config.duplicate_cosine)

    def _hit(self, num: int, score: float, dense: tuple[int, float] | None, keyword: tuple[int, float] | None,
             query_tokens: list[str], rerank: tuple[int, float] | None, shaping: dict[str, Any],
             boost: float, duplicates: int) -> Hit:
        m = self._records[num]
        terms = self._keyword.terms(num)
        why = Why(dense_rank=dense[0] if dense else None, dense_score=round(dense[1], 6) if dense else None,
                  keyword_rank=keyword[0] if keyword else None,
                  keyword_score=round(keyword[1], 6) if keyword else None,
                  matched_terms=[t for t in query_tokens if t in terms] if keyword else [],
                  rerank_score=rerank[1] if rerank else None, rerank_rank=rerank[0] if rerank else None,
                  intent=shaping["intent"], intent_confidence=shaping["intent_confidence"], intent_boost=boost,
                  duplicates=duplicates)
        return Hit(id=m.id, score=score, text=m.text, kind=m.kind, tags=list(m.tags), source=m.source,
                   created_at=m.created_at, updated_at=m.updated_at, why=why)

    @_serialised
    def nearest(self, vector: np.ndarray, k: int = 10) -> list[tuple[str, float]]:
        """Dense search by a vector (no text, no fusion): (id, cosine) best first."""
        self.refresh()
        return [(self._records[n].id, s) for n, s in self._dense.search(np.asarray(vector), k)]

    @_serialised
    def stats(self) -> dict[str, Any]:
        self.refresh()
        return {"count": len(self._records), "kinds": dict(sorted(self._records.kind_counts().items())),
                "indexed": self._dense.live, "dense_index": self._dense.kind, "faiss_ntotal": self._dense.ntotal,
                "keyword_docs": len(self._keyword), "change_counter": self._seq,
                "dimension": self.embedder.dimension, "precision": self.embedder.precision,
                "open_seconds": round(self.open_seconds, 4), "opened_from_snapshot": self.opened_from_snapshot}

    @_serialised
    def __len__(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM memories").fetchone()[0])

    # -- lifecycle ---------------------------------------------------------------------------
    @_serialised
    def close(self) -> None:
        """Seal a snapshot if one is due (skipped, with a warning, when another process holds
        the write lock or the disk refuses), then close the database."""
        if self._conn is None:
            return
        try:
            if self._snapshot_due():
                self._save_snapshot(wait=False)
        except (StoreError, OSError, sqlite3.Error) as exc:
            warnings.warn(f"index snapshot of {self.path} not written: {exc}", stacklevel=2)
        finally:
            self._conn.close()
            self._conn = None  # type: ignore[assignment]
            if self._keyword_thread is not None:
                self._keyword_thread.shutdown()
                self._keyword_thread = None

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _configure(conn: sqlite3.Connection, config: StoreConfig) -> None:
    """WAL (readers never block the writer), zeroed deletes, fsync on commit, waits not errors."""
    conn.execute(f"PRAGMA busy_timeout={int(config.busy_timeout_ms)}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute("PRAGMA foreign_keys=ON")


def _read_meta(conn: sqlite3.Connection) -> dict[str, str]:
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone() is None:
        return {}
    return dict(conn.execute("SELECT key, value FROM meta").fetchall())


def _initialise(conn: sqlite3.Connection, embedder: Embedder, passphrase: str | None,
                key: bytes | None) -> tuple[dict[str, str], Sealer | None]:
    """Create tables and meta once (the caller holds the file lock, so two first opens do not race).

    Returns the meta table and, when this call created the store, the sealer it made (so
    the passphrase is not stretched twice).
    """
    old = _read_meta(conn)
    if old.get("store_schema_version") not in (None, str(STORE_SCHEMA_VERSION)):
        raise StoreError(f"store {_conn_path(conn)} has schema version {old['store_schema_version']} "
                         f"(unencrypted); this runtime supports {STORE_SCHEMA_VERSION}: export its memories "
                         "with the runtime that wrote it and add them to a new store")
    conn.executescript(_SCHEMA)
    conn.execute("BEGIN IMMEDIATE")
    try:
        meta = _read_meta(conn)
        if "key_check" in meta:  # another process created it first
            conn.execute("COMMIT")
            return meta, None
        kdf = KdfParams.fresh()
        sealer = Sealer(key if key is not None else derive_key(passphrase or "", kdf))
        meta = {"store_schema_version": str(STORE_SCHEMA_VERSION), "kdf": kdf.to_json(),
                "key_check": sealer.key_check().hex(), "change_counter": "0", "delete_counter": "0",
                **embedder_identity(embedder)}
        conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", sorted(meta.items()))
        conn.execute("COMMIT")
        return meta, sealer
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _conn_path(conn: sqlite3.Connection) -> str:
    """The folder of a connection's database file, for error messages."""
    return str(Path(conn.execute("PRAGMA database_list").fetchone()[2]).parent)


def _check_identity(meta: dict[str, str], path: Path, embedder: Embedder) -> None:
    """First open records the embedder; later opens must use the same one."""
    if meta.get("store_schema_version") != str(STORE_SCHEMA_VERSION):
        raise StoreError(f"store {path} has schema version {meta.get('store_schema_version')}; "
                         f"this runtime supports {STORE_SCHEMA_VERSION}")
    identity = embedder_identity(embedder)
    mismatched = [k for k, v in identity.items() if meta.get(k) != v]
    if mismatched:
        details = ", ".join(f"{k}: store {str(meta.get(k))[:12]} vs given {identity[k][:12]}" for k in mismatched)
        raise StoreError(f"store {path} was built with a different embedder ({details}); "
                         "its vectors are not comparable. Use the original bundle and precision, "
                         "or re-embed into a new store.")


def reranker_parts(reranker: Any) -> tuple[RerankFn, float]:
    """(scoring function, weight of the first-stage cosine) of a reranker given as an object
    with `score` (the bundle's ranker: its `first_stage_scale`, 0 when it has none) or as a
    plain `(query, texts) -> scores` function (taken as it is: 0)."""
    if hasattr(reranker, "score"):
        return reranker.score, float(getattr(reranker, "first_stage_scale", 0.0) or 0.0)
    return reranker, 0.0


def query_vector_for(embedder: Embedder, query: str, vector: np.ndarray | None = None) -> np.ndarray:
    """`vector` when the search already embedded the query, else the embedder's query vector:
    keyword-mode searches skip embedding until a residual ranker needs the cosine."""
    return vector if vector is not None else embedder.encode_queries([query])[0]


def with_first_stage(scores: np.ndarray, scale: float, vectors: np.ndarray, query_vector: np.ndarray) -> np.ndarray:
    """A residual ranker's relevance: its scores plus `scale` x the cosine of each candidate's
    unit vector (rows of `vectors`) to the query's. The ranker was trained on exactly this
    sum (apex_models.training.ranker), so its logits alone are a correction, not a ranking."""
    scores = np.asarray(scores, dtype=np.float64)
    if not scale or not len(scores):
        return scores
    return scores + scale * (np.asarray(vectors, dtype=np.float32) @ np.asarray(query_vector, dtype=np.float32))


def _rrf(lists: list[list[tuple[int, float]]], k: int,
         weights: Sequence[float] | None = None) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: score = sum over lists of weight / (k + rank), rank from 1."""
    fused: dict[int, float] = {}
    for ranked, weight in zip(lists, weights or [1.0] * len(lists)):
        for rank, (num, _) in enumerate(ranked, start=1):
            fused[num] = fused.get(num, 0.0) + weight / (k + rank)
    return sorted(fused.items(), key=lambda p: -p[1])


def collapse_near_duplicates(fused: list[tuple[int, float]], dense: DenseIndex, need: int,
                             threshold: float) -> tuple[list[tuple[int, float]], dict[int, int]]:
    """Keep the best of each group of near-identical memories (cosine above `threshold`);
    also return, per kept row, how many it absorbed.

    Walks down the fused order comparing each candidate with the hits kept so far and
    stops once `need` are kept, so a search never pays for candidates it will cut
    (small matrix-vector products only: no Gram matrix of every candidate). Rows missing
    from `dense` are kept as they are. Shared with the cloud service's search.
    """
    if len(fused) < 2:
        return fused, {}
    kept: list[int] = []                  # positions in `fused`
    with_vector: list[int] = []           # the kept positions that have a vector, in kept_vectors order
    absorbed: dict[int, int] = {}
    kept_vectors = np.zeros((need, dense.dimension), dtype=np.float32)
    chunk = 2 * need + 8
    for start in range(0, len(fused), chunk):
        block = fused[start:start + chunk]
        present = [i for i, (n, _) in enumerate(block) if n in dense]
        vectors = dict(zip(present, dense.vectors([block[i][0] for i in present])))
        for offset in range(len(block)):
            vector = vectors.get(offset)
            if vector is not None:
                if with_vector:
                    similarity = kept_vectors[:len(with_vector)] @ vector
                    best = int(np.argmax(similarity))
                    if float(similarity[best]) > threshold:
                        twin = fused[with_vector[best]][0]
                        absorbed[twin] = absorbed.get(twin, 0) + 1
                        continue
                kept_vectors[len(with_vector)] = vector
                with_vector.append(start + offset)
            kept.append(start + offset)
            if len(kept) == need:
                return [fused[i] for i in kept], absorbed
    return [fused[i] for i in kept], absorbed
