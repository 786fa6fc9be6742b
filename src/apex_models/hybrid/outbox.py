"""The durable side of sync: an outbox of writes bound for the cloud, and the routes and cursors.

One SQLite file (`sync.db`) beside the memory store's database, in WAL mode with fsync on
commit, so a write the runtime acknowledged is still queued after a crash, a restart or
a day-long cloud outage. Nothing readable is kept in it: payloads and the reasons for
each routing decision are sealed with the store's key (`MemoryStore.seal_blob`), bound
to the memory they belong to; what stays in clear is ids, operations, attempt counts and
times, which a sync status display needs without the key.

Delivery is at least once and the server is idempotent on the client's memory id, so a
retried push never duplicates; the newest queued operation of a memory supersedes the
older ones (an update after an add sends one upsert, a delete after an add one
tombstone).
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

SYNC_DB = "sync.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    memory_id TEXT NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('upsert', 'delete')),
    payload BLOB,
    state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'blocked')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_at, seq);
CREATE INDEX IF NOT EXISTS outbox_memory ON outbox (memory_id);
CREATE TABLE IF NOT EXISTS routes (
    memory_id TEXT PRIMARY KEY,
    destination TEXT NOT NULL,
    version TEXT NOT NULL,
    detail BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS sync_state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _needs_key(*_: object) -> bytes:
    raise PermissionError("this outbox was opened without the store's key: only its status can be read")


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Pending:
    """One queued operation, decrypted for sending."""

    seq: int
    memory_id: str
    op: str
    payload: dict[str, Any] | None
    attempts: int


class Outbox:
    """The sync database of one store. `seal(bytes, context)` / `unseal(blob, context)` are the
    store's own (so the outbox is only readable with the store's key)."""

    def __init__(self, folder: Path, seal: Callable[[bytes, str], bytes] | None,
                 unseal: Callable[[bytes, str], bytes] | None, *, base_backoff_s: float = 1.0,
                 max_backoff_s: float = 300.0) -> None:
        """Without `seal`/`unseal` (no key) only `status` and the counters can be read."""
        self.path = Path(folder) / SYNC_DB
        self._seal = seal or _needs_key
        self._unseal = unseal or _needs_key
        self.base_backoff_s, self.max_backoff_s = base_backoff_s, max_backoff_s
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=60,
                                     check_same_thread=False)
        self._lock = threading.RLock()   # one connection, shared by the writer and the sync thread
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA secure_delete=ON")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, args).fetchall()

    # -- writes ------------------------------------------------------------------------------
    def record(self, memory_id: str, version: str, route: dict[str, Any], payload: dict[str, Any] | None,
               op: str = "upsert") -> None:
        """Remember the route of one memory version and queue `op` with `payload` when there is
        one (None: nothing for the cloud), in one transaction (both or neither)."""
        self.record_many([(memory_id, version, route, payload, op)])

    def record_many(self, entries: list[tuple[str, str, dict[str, Any], dict[str, Any] | None, str]]) -> None:
        """`record` for a batch, in one transaction (one fsync for a bulk add)."""
        sealed = [(m, v, r, p, op, self._seal(json.dumps(r).encode(), f"route|{m}")) for m, v, r, p, op in entries]
        with self._tx() as conn:
            for memory_id, version, route, payload, op, detail in sealed:
                conn.execute("INSERT OR REPLACE INTO routes (memory_id, destination, version, detail) "
                             "VALUES (?, ?, ?, ?)", (memory_id, route["destination"], version, detail))
                if payload is not None:
                    self._queue(conn, memory_id, op, payload)

    def record_delete(self, memory_id: str) -> bool:
        """Forget the route; queue a tombstone if the memory had been shared. True if queued."""
        with self._tx() as conn:
            row = conn.execute("SELECT destination FROM routes WHERE memory_id = ?", (memory_id,)).fetchone()
            conn.execute("DELETE FROM routes WHERE memory_id = ?", (memory_id,))
            if row is None or row[0] != "shared":
                # never shared: drop anything still queued for it, nothing to tell the cloud
                conn.execute("DELETE FROM outbox WHERE memory_id = ?", (memory_id,))
                return False
            self._queue(conn, memory_id, "delete", {"updated_at": _utc_now()})
            return True

    def forget(self, memory_id: str) -> None:
        """Drop the route and anything queued (the memory is gone here and in the cloud)."""
        with self._tx() as conn:
            conn.execute("DELETE FROM routes WHERE memory_id = ?", (memory_id,))
            conn.execute("DELETE FROM outbox WHERE memory_id = ?", (memory_id,))

    def _queue(self, conn: sqlite3.Connection, memory_id: str, op: str, payload: dict[str, Any]) -> None:
        """`payload`: the memory's fields for an upsert; {"updated_at"} for a delete (the
        server's conflict rule orders changes by it)."""
        blob = self._seal(json.dumps(payload).encode(), f"outbox|{memory_id}")
        # the newest operation supersedes what is still queued for this memory
        conn.execute("DELETE FROM outbox WHERE memory_id = ? AND state = 'pending'", (memory_id,))
        conn.execute("INSERT INTO outbox (memory_id, op, payload, created_at) VALUES (?, ?, ?, ?)",
                     (memory_id, op, blob, time.time()))

    # -- reads -------------------------------------------------------------------------------
    def route(self, memory_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT detail FROM routes WHERE memory_id = ?", (memory_id,))
        return None if not rows else json.loads(self._unseal(rows[0][0], f"route|{memory_id}"))

    def versions(self) -> dict[str, tuple[str, str]]:
        """memory id -> (destination, version) for every routed memory (reconciliation)."""
        return {m: (d, v) for m, d, v in self._query("SELECT memory_id, destination, version FROM routes")}

    def due(self, limit: int = 256, now: float | None = None) -> list[Pending]:
        """Pending operations whose retry time has come, oldest first."""
        now = time.time() if now is None else now
        rows = self._query(
            "SELECT seq, memory_id, op, payload, attempts FROM outbox WHERE state = 'pending' AND next_at <= ? "
            "ORDER BY seq LIMIT ?", (now, limit))
        return [Pending(seq, mid, op, None if blob is None else json.loads(self._unseal(blob, f"outbox|{mid}")),
                        attempts) for seq, mid, op, blob, attempts in rows]

    # -- outcomes ----------------------------------------------------------------------------
    def ack(self, seqs: list[int]) -> None:
        """The cloud has these: drop them from the queue."""
        with self._tx() as conn:
            conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

    def retry_later(self, seqs: list[int], error: str, now: float | None = None) -> None:
        """Back off exponentially (with jitter, so devices do not retry in lockstep)."""
        now = time.time() if now is None else now
        with self._tx() as conn:
            for seq in seqs:
                row = conn.execute("SELECT attempts FROM outbox WHERE seq = ?", (seq,)).fetchone()
                if row is None:
                    continue
                attempts = row[0] + 1
                delay = min(self.max_backoff_s, self.base_backoff_s * 2 ** (attempts - 1))
                delay *= 0.5 + random.random() / 2
                conn.execute("UPDATE outbox SET attempts = ?, next_at = ?, last_error = ? WHERE seq = ?",
                             (attempts, now + delay, error[:500], seq))

    def block(self, seq: int, reason: str) -> None:
        """Never send this one (the last check before sending found a secret); kept for review."""
        with self._tx() as conn:
            conn.execute("UPDATE outbox SET state = 'blocked', payload = NULL, last_error = ? WHERE seq = ?",
                         (reason[:500], seq))

    def retry_now(self) -> int:
        """Make every pending operation due at once (after an outage: `memory.outbox.retry_now()`)."""
        with self._tx() as conn:
            return conn.execute("UPDATE outbox SET next_at = 0 WHERE state = 'pending'").rowcount

    # -- cursor and status -------------------------------------------------------------------
    def get_state(self, key: str, default: str | None = None) -> str | None:
        rows = self._query("SELECT value FROM sync_state WHERE key = ?", (key,))
        return default if not rows else rows[0][0]

    def set_state(self, key: str, value: str) -> None:
        with self._tx() as conn:
            conn.execute("INSERT OR REPLACE INTO sync_state (key, value) VALUES (?, ?)", (key, value))

    def status(self, now: float | None = None) -> dict[str, Any]:
        """What `apex sync status` shows: counts, the oldest wait, the next retry, the last errors."""
        now = time.time() if now is None else now
        with self._lock:
            return self._status(now)

    def _status(self, now: float) -> dict[str, Any]:
        q = self._conn.execute
        pending, oldest, next_at = q("SELECT COUNT(*), MIN(created_at), MIN(next_at) FROM outbox "
                                     "WHERE state = 'pending'").fetchone()
        blocked = q("SELECT COUNT(*) FROM outbox WHERE state = 'blocked'").fetchone()[0]
        by_op = dict(q("SELECT op, COUNT(*) FROM outbox WHERE state = 'pending' GROUP BY op").fetchall())
        errors = [{"memory_id": m, "op": op, "attempts": a, "error": e,
                   "retry_in_s": round(max(0.0, n - now), 1), "state": s}
                  for m, op, a, e, n, s in q(
                      "SELECT memory_id, op, attempts, last_error, next_at, state FROM outbox "
                      "WHERE last_error IS NOT NULL ORDER BY seq DESC LIMIT 10")]
        routed = dict(q("SELECT destination, COUNT(*) FROM routes GROUP BY destination").fetchall())
        return {"pending": pending, "pending_by_op": by_op, "blocked": blocked,
                "oldest_pending_age_s": None if oldest is None else round(now - oldest, 1),
                "next_retry_in_s": None if next_at is None else round(max(0.0, next_at - now), 1),
                "routed": {"local": routed.get("local", 0), "shared": routed.get("shared", 0)},
                "pull_cursor": int(self.get_state("pull_cursor", "0") or 0),
                "last_push": self.get_state("last_push"), "last_pull": self.get_state("last_pull"),
                "last_errors": errors}
