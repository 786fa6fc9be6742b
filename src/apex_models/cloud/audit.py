"""The audit log: one record per read, write and admin action, and per refusal.

Records name ids, never content: a search records the SHA-256 of its query and the
number of hits, a write the memory id. So the log can be kept after a user's data is
erased (it then holds only random ids that no longer resolve to a person).
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool

from apex_models.cloud.auth import Caller


def record(conn: psycopg.Connection, caller: Caller | None, action: str, *, outcome: str = "ok",
           team_id: uuid.UUID | None = None, target: Any = None, detail: dict[str, Any] | None = None) -> None:
    """Write one record in the caller's transaction (it commits, or vanishes, with the action)."""
    conn.execute("INSERT INTO audit (user_id, token_id, team_id, action, target, outcome, detail)"
                 " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                 (caller.user_id if caller else None, caller.token_id if caller else None, team_id, action,
                  None if target is None else str(target), outcome, Jsonb(detail or {})))


def record_alone(pool: ConnectionPool, caller: Caller | None, action: str, **kwargs: Any) -> None:
    """Write one record in its own transaction: for refusals, whose request transaction rolls back."""
    with pool.connection() as conn:
        record(conn, caller, action, **kwargs)


def page(conn: psycopg.Connection, *, team_id: uuid.UUID | None = None, user_id: uuid.UUID | None = None,
         before: int | None = None, limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
    """Newest first; keyset pagination by record id."""
    where, params = [], []
    for column, value in (("team_id", team_id), ("user_id", user_id)):
        if value is not None:
            where.append(f"{column} = %s")
            params.append(value)
    if before is not None:
        where.append("id < %s")
        params.append(before)
    sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC LIMIT %s"
    rows = conn.execute(sql, (*params, limit + 1)).fetchall()
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (rows[-1]["id"] if more and rows else None)
