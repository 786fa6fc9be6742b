"""Bearer tokens, users and per-team roles.

A token is `apex_` plus 32 random bytes (URL-safe base64, 256 bits). Only its SHA-256
is stored. A slow password hash (bcrypt, scrypt) protects low-entropy secrets people
choose against guessing; a 256-bit random token cannot be guessed, so one SHA-256 is as
strong and lets every request find its token by an indexed equality instead of paying
about 100 ms of bcrypt. A stolen database yields hashes no one can turn back into tokens.

Roles per team, each including the ones below: reader (read, search, pull), writer
(add, update, delete, push), admin (members below owner, the team's audit log), owner
(owners, deleting the team). Operators (a flag on the user) create users and read the
whole audit log; they see no team's memories unless they are members.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

TOKEN_PREFIX = "apex_"
ROLE_RANK = {"reader": 1, "writer": 2, "admin": 3, "owner": 4}


@dataclass(frozen=True)
class Caller:
    """Who is calling: the token's user."""

    user_id: uuid.UUID
    token_id: uuid.UUID
    name: str
    is_operator: bool


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def authenticate(conn: psycopg.Connection, token: str) -> Caller | None:
    """The caller behind a live (unrevoked, unexpired) token, or None."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
        return None
    row = conn.execute(
        "SELECT t.id AS token_id, u.id AS user_id, u.name, u.is_operator FROM tokens t JOIN users u ON u.id = t.user_id"
        " WHERE t.token_sha256 = %s AND t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now())",
        (token_hash(token),)).fetchone()
    if row is None:
        return None
    return Caller(user_id=row["user_id"], token_id=row["token_id"], name=row["name"], is_operator=row["is_operator"])


def role_in(conn: psycopg.Connection, team_id: uuid.UUID, user_id: uuid.UUID) -> str | None:
    row = conn.execute("SELECT role FROM members WHERE team_id = %s AND user_id = %s", (team_id, user_id)).fetchone()
    return row["role"] if row else None


def at_least(role: str | None, needed: str) -> bool:
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[needed]


def create_user(conn: psycopg.Connection, name: str, operator: bool = False) -> dict[str, Any]:
    return conn.execute("INSERT INTO users (id, name, is_operator) VALUES (%s, %s, %s) RETURNING *",
                        (uuid.uuid4(), name, operator)).fetchone()


def issue_token(conn: psycopg.Connection, user_id: uuid.UUID, name: str, expires_at: datetime | None = None,
                token: str | None = None) -> dict[str, Any]:
    """Store a new token's hash; the returned row carries the secret under "token" (shown once)."""
    token = token or new_token()
    row = conn.execute("INSERT INTO tokens (id, user_id, name, token_sha256, expires_at) VALUES (%s, %s, %s, %s, %s)"
                       " RETURNING id, name, created_at, expires_at, revoked_at",
                       (uuid.uuid4(), user_id, name, token_hash(token), expires_at)).fetchone()
    return {**row, "token": token}


def ensure_operator(conn: psycopg.Connection, token: str, name: str = "operator") -> bool:
    """Make `token` an operator's token unless it already exists (the bootstrap). True if created."""
    if not token.startswith(TOKEN_PREFIX) or len(token) < 40:
        raise ValueError(f"a bootstrap token must start with {TOKEN_PREFIX!r} and hold at least 32 random "
                         "characters (make one with `python -c \"import secrets; print('apex_' + "
                         "secrets.token_urlsafe(32))\"`)")
    if conn.execute("SELECT 1 FROM tokens WHERE token_sha256 = %s", (token_hash(token),)).fetchone():
        return False
    user = create_user(conn, name, operator=True)
    issue_token(conn, user["id"], "bootstrap", token=token)
    return True
