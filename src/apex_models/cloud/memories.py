"""Memories in PostgreSQL: writes that feed the change log, reads scoped to one team, and sync.

Every function takes the team id and filters by it: there is no query here that could
read or change another team's rows. Writes take the team's advisory lock before taking a
sequence number, so within a team sequence numbers commit in increasing order; that is
what makes "pull everything above my cursor" complete (see the migration's notes).

Conflict rule for sync (push): a change carries the device's `updated_at`. It is applied
when it is newer than the server's version of that memory; when the times are equal the
server's version stays (so a retried push is a no-op, reported `duplicate` when the
content is the same); otherwise it is `stale` and the server's version is returned so
the device can adopt it. Deletes are changes like any other (tombstones): a delete newer
than an edit wins, an edit newer than a delete brings the memory back. Writes through
the REST endpoints are stamped with the server's clock.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Sequence

import numpy as np
import psycopg

from apex_models.runtime.keyword import tokens

COLUMNS = "id, team_id, text, kind, tags, source, created_at, updated_at, seq"
CHANGE_COLUMNS = "id, seq, deleted, text, kind, tags, source, created_at, updated_at"


def now() -> datetime:
    return datetime.now(timezone.utc)


def keyword_document(text: str) -> str:
    """The runtime's code-aware tokens (snake_case and camelCase split), the input of the tsvector."""
    return " ".join(tokens(text))


def lock_team(conn: psycopg.Connection, team_id: uuid.UUID) -> None:
    """Hold the team's feed lock until this transaction ends (re-entrant within it)."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s::text, 0))", (team_id,))


def next_seq(conn: psycopg.Connection, team_id: uuid.UUID) -> int:
    """Lock the team's feed for this transaction, then take the next sequence number."""
    lock_team(conn, team_id)
    return conn.execute("SELECT nextval('change_seq') AS s").fetchone()["s"]


def _vector_bytes(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype=np.float32).tobytes()


def insert(conn: psycopg.Connection, team_id: uuid.UUID, user_id: uuid.UUID | None, memory_id: uuid.UUID,
           fields: dict[str, Any], vector: np.ndarray, created_at: datetime | None = None,
           updated_at: datetime | None = None) -> dict[str, Any] | None:
    """A new memory; None when this team already has that id."""
    seq = next_seq(conn, team_id)
    stamp = updated_at or now()
    return conn.execute(
        "INSERT INTO memories (team_id, id, seq, created_by, text, kind, tags, source, created_at, updated_at,"
        " embedding, tsv) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, to_tsvector('english', %s))"
        f" ON CONFLICT (team_id, id) DO NOTHING RETURNING {COLUMNS}",
        (team_id, memory_id, seq, user_id, fields["text"], fields["kind"], fields["tags"], fields["source"],
         created_at or stamp, stamp, _vector_bytes(vector), keyword_document(fields["text"]))).fetchone()


def get(conn: psycopg.Connection, team_id: uuid.UUID, memory_id: uuid.UUID) -> dict[str, Any] | None:
    return conn.execute(f"SELECT {COLUMNS} FROM memories WHERE team_id = %s AND id = %s AND NOT deleted",
                        (team_id, memory_id)).fetchone()


def update(conn: psycopg.Connection, team_id: uuid.UUID, memory_id: uuid.UUID, fields: dict[str, Any],
           vector: np.ndarray | None) -> dict[str, Any] | None:
    """Change some fields (a new text comes with its new vector); None when there is no such memory."""
    seq = next_seq(conn, team_id)
    sets = ["seq = %s", "updated_at = %s"]
    params: list[Any] = [seq, now()]
    for name in ("text", "kind", "tags", "source"):
        if name in fields:
            sets.append(f"{name} = %s")
            params.append(fields[name])
    if "text" in fields:
        sets += ["embedding = %s", "tsv = to_tsvector('english', %s)"]
        params += [_vector_bytes(vector), keyword_document(fields["text"])]
    return conn.execute(f"UPDATE memories SET {', '.join(sets)} WHERE team_id = %s AND id = %s AND NOT deleted"
                        f" RETURNING {COLUMNS}", (*params, team_id, memory_id)).fetchone()


_TOMBSTONE = "deleted = true, text = NULL, kind = NULL, tags = '{}', source = NULL, embedding = NULL, tsv = NULL"


def delete(conn: psycopg.Connection, team_id: uuid.UUID, memory_id: uuid.UUID) -> bool:
    """Turn a memory into a tombstone (content gone; the id and time stay for sync)."""
    seq = next_seq(conn, team_id)
    row = conn.execute(f"UPDATE memories SET {_TOMBSTONE}, seq = %s, updated_at = %s"
                       " WHERE team_id = %s AND id = %s AND NOT deleted RETURNING id",
                       (seq, now(), team_id, memory_id)).fetchone()
    return row is not None


def page(conn: psycopg.Connection, team_id: uuid.UUID, cursor: int, limit: int) -> tuple[list[dict], int | None]:
    """Live memories in insertion order after `cursor` (an opaque row number), and the next cursor."""
    rows = conn.execute(f"SELECT num, {COLUMNS} FROM memories WHERE team_id = %s AND NOT deleted AND num > %s"
                        " ORDER BY num LIMIT %s", (team_id, cursor, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1]["num"] if more and rows else None)


# -- sync ---------------------------------------------------------------------------------------
def _same_content(row: dict[str, Any], change: Any) -> bool:
    if change.deleted or row["deleted"]:
        return bool(change.deleted) == bool(row["deleted"])
    return (row["text"], row["kind"], list(row["tags"]), row["source"]) == (
        change.text, change.kind, list(change.tags), change.source)


def push(conn: psycopg.Connection, team_id: uuid.UUID, user_id: uuid.UUID, changes: Sequence[Any],
         vectors: dict[uuid.UUID, np.ndarray]) -> list[dict[str, Any]]:
    """Apply a device's changes under the conflict rule; one result per change, in order.

    `vectors` holds the embedding of every non-delete change's text. The whole push is one
    transaction holding the team's lock, so it is applied all or nothing.
    """
    lock_team(conn, team_id)  # before any row lock: two pushes never wait on each other's rows
    results = []
    for change in changes:
        current = conn.execute(f"SELECT {CHANGE_COLUMNS} FROM memories WHERE team_id = %s AND id = %s FOR UPDATE",
                               (team_id, change.id)).fetchone()
        if current is not None and change.updated_at <= current["updated_at"]:
            status = "duplicate" if (change.updated_at == current["updated_at"]
                                     and _same_content(current, change)) else "stale"
            results.append({"id": change.id, "status": status, "seq": current["seq"],
                            "current": current if status == "stale" else None})
            continue
        seq = next_seq(conn, team_id)
        if change.deleted:
            if current is None:
                conn.execute("INSERT INTO memories (team_id, id, seq, created_by, created_at, updated_at, deleted)"
                             " VALUES (%s, %s, %s, %s, %s, %s, true)",
                             (team_id, change.id, seq, user_id, change.created_at or change.updated_at,
                              change.updated_at))
            else:
                conn.execute(f"UPDATE memories SET {_TOMBSTONE}, seq = %s, updated_at = %s"
                             " WHERE team_id = %s AND id = %s", (seq, change.updated_at, team_id, change.id))
        else:
            conn.execute(
                "INSERT INTO memories (team_id, id, seq, created_by, text, kind, tags, source, created_at, updated_at,"
                " embedding, tsv) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, to_tsvector('english', %s))"
                " ON CONFLICT (team_id, id) DO UPDATE SET seq = EXCLUDED.seq, text = EXCLUDED.text,"
                " kind = EXCLUDED.kind, tags = EXCLUDED.tags, source = EXCLUDED.source,"
                " updated_at = EXCLUDED.updated_at, embedding = EXCLUDED.embedding, tsv = EXCLUDED.tsv,"
                " deleted = false",
                (team_id, change.id, seq, user_id, change.text, change.kind, list(change.tags), change.source,
                 change.created_at or change.updated_at, change.updated_at, _vector_bytes(vectors[change.id]),
                 keyword_document(change.text)))
        results.append({"id": change.id, "status": "applied", "seq": seq, "current": None})
    return results


def pull(conn: psycopg.Connection, team_id: uuid.UUID, cursor: int, limit: int) -> tuple[list[dict], int, bool]:
    """Changes (tombstones included) with sequence above `cursor`, oldest first."""
    rows = conn.execute(f"SELECT {CHANGE_COLUMNS} FROM memories WHERE team_id = %s AND seq > %s ORDER BY seq LIMIT %s",
                        (team_id, cursor, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1]["seq"] if rows else cursor), more


# -- one user's data ------------------------------------------------------------------------------
def erase_authored(conn: psycopg.Connection, user_id: uuid.UUID) -> int:
    """Tombstone every memory the user created, team by team (devices learn of it by pulling)."""
    rows = conn.execute("SELECT team_id, id FROM memories WHERE created_by = %s AND NOT deleted ORDER BY team_id",
                        (user_id,)).fetchall()
    for row in rows:
        seq = next_seq(conn, row["team_id"])
        conn.execute(f"UPDATE memories SET {_TOMBSTONE}, seq = %s, updated_at = %s WHERE team_id = %s AND id = %s",
                     (seq, now(), row["team_id"], row["id"]))
    conn.execute("UPDATE memories SET created_by = NULL WHERE created_by = %s", (user_id,))
    return len(rows)
