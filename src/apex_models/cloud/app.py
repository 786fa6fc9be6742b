"""The cloud memory service: a FastAPI app over PostgreSQL (see serving/README.md for the API tour).

`create_app(settings)` builds it; the lifespan opens the connection pool, runs the
migrations to head, makes the bootstrap operator token and loads the embedder (from
the bundle, or a Ray Serve deployment). Handlers are plain functions run in FastAPI's
thread pool; each opens one transaction, checks the caller's role in the team named by
the path, does its work and writes its audit record in that same transaction.
Refusals (401, 403, 404) are audited in a transaction of their own, after the request's
connection is back in the pool.
"""

from __future__ import annotations

import hashlib
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any, AsyncIterator

import psycopg
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import ConnectionPool, PoolTimeout

from apex_models.cloud import audit, auth, memories
from apex_models.cloud.auth import Caller
from apex_models.cloud.db import migrate, open_pool
from apex_models.cloud.limits import BodySizeLimit, RateLimiter
from apex_models.cloud.schemas import (AuditPage, ChangeOut, EraseOut, HitOut, MemberIn, MemberOut, MemoryIn,
                                       MemoryOut, MemoryPage, MemoryPatch, MeOut, PullOut, PushIn, PushOut, SearchIn,
                                       TeamIn, TeamOut, TokenCreated, TokenIn, TokenOut, UserCreated, UserExport,
                                       UserIn, UserOut)
from apex_models.cloud.search import SearchEngine
from apex_models.cloud.settings import Settings

API_VERSION = "1.0.0"
MAX_CURSOR = 2**62


class Refused(HTTPException):
    """A refusal to audit: the handler records it once the request's connection is released
    (recording it inside would need a second pooled connection while holding the first)."""

    def __init__(self, status: int, message: str, caller: Caller | None, action: str, *,
                 outcome: str = "denied", **record: Any) -> None:
        super().__init__(status, message)
        self.caller, self.action, self.outcome, self.record = caller, action, outcome, record


bearer = HTTPBearer(auto_error=False, description="an API token: `Authorization: Bearer apex_...`")


@dataclass
class State:
    settings: Settings
    pool: ConnectionPool
    search: SearchEngine
    embedder: Any
    limiter: RateLimiter
    anonymous: RateLimiter


def _load_embedder(settings: Settings) -> Any:
    """The bundle's embedder (verified), or the Ray Serve deployment's handle."""
    if settings.ray_embedder:
        from apex_models.cloud.replicas import RayEmbedder

        return RayEmbedder(settings.ray_app_name)
    if settings.bundle is None:
        raise ValueError("no bundle: set APEX_BUNDLE (or --bundle) to the bundle whose embedder the server uses")
    from apex_models.runtime.bundle import load_bundle

    # A server sizes its threads itself (workers x threads = cores): no extra bulk threads.
    return load_bundle(settings.bundle).embedder(precision=settings.precision,
                                                 intra_op_threads=settings.embedder_threads,
                                                 bulk_threads=settings.embedder_threads)


def load_reranker(settings: Settings) -> Any:
    """The bundle's cross-encoder (`.score(query, texts)`, and its `first_stage_scale`), or None when the bundle
    ships no ranker (the registry keeps one out until it beats the embedder alone) or
    re-ranking is switched off."""
    if not settings.rerank or settings.bundle is None:
        return None
    from apex_models.runtime.bundle import load_bundle

    bundle = load_bundle(settings.bundle)
    if not bundle.has("ranker"):
        return None
    return bundle.ranker(precision=settings.precision, intra_op_threads=settings.embedder_threads,
                         bulk_threads=settings.embedder_threads)


def create_app(settings: Settings, embedder: Any = None, reranker: Any = None) -> FastAPI:
    """The ASGI app; `embedder` and `reranker` override the bundle's (tests pass ones they share)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.database_url is None:
            raise ValueError("no database: set APEX_DATABASE_URL (`apex serve` starts a private PostgreSQL "
                             "when none is set)")
        url = settings.database_url.get_secret_value()
        migrate(url)
        pool = open_pool(url, settings.pool_size)
        try:
            if settings.bootstrap_token is not None:
                with pool.connection() as conn:
                    auth.ensure_operator(conn, settings.bootstrap_token.get_secret_value())
            model = embedder if embedder is not None else _load_embedder(settings)
            rerank = reranker if reranker is not None else load_reranker(settings)
            app.state.cloud = State(settings, pool, SearchEngine(model, rerank=rerank), model,
                                    RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst),
                                    RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst))
            yield
        finally:
            pool.close()

    app = FastAPI(title="apex cloud memory", version=API_VERSION, lifespan=lifespan,
                  description="Team memories with hybrid search, roles, an audit log and a sync API. "
                              "Every endpoint but /v1/health needs `Authorization: Bearer <token>`.")
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)

    @app.exception_handler(psycopg.errors.DataError)
    async def _data_error(request: Request, exc: psycopg.errors.DataError) -> JSONResponse:
        return JSONResponse({"detail": f"invalid value: {exc.diag.message_primary or 'out of range'}"},
                            status_code=422)

    @app.exception_handler(PoolTimeout)
    async def _busy(request: Request, exc: PoolTimeout) -> JSONResponse:
        return JSONResponse({"detail": "the server is busy; retry shortly"}, status_code=503,
                            headers={"Retry-After": "1"})

    @app.exception_handler(Refused)
    async def _refused(request: Request, exc: Refused) -> JSONResponse:
        await run_in_threadpool(audit.record_alone, _state(request).pool, exc.caller, exc.action,
                                outcome=exc.outcome, **exc.record)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    _routes(app)
    return app


# -- dependencies -----------------------------------------------------------------------------------
def _state(request: Request) -> State:
    return request.app.state.cloud


def _throttle(limiter: RateLimiter, key: Any) -> None:
    ok, wait = limiter.allow(key)
    if not ok:
        raise HTTPException(429, "rate limit exceeded", headers={"Retry-After": str(max(1, round(wait)))})


def current_caller(request: Request,
                   credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> Caller:
    """The token's user, after the per-token rate limit; 401 (audited) for a missing or bad token."""
    state = _state(request)
    if credentials is None or credentials.scheme.lower() != "bearer":
        _throttle(state.anonymous, request.client.host if request.client else "?")
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    with state.pool.connection() as conn:
        caller = auth.authenticate(conn, credentials.credentials)
        if caller is None:
            audit.record(conn, None, "auth", outcome="denied", detail={"path": request.url.path})
    if caller is None:
        _throttle(state.anonymous, request.client.host if request.client else "?")
        raise HTTPException(401, "invalid, expired or revoked token", headers={"WWW-Authenticate": "Bearer"})
    _throttle(state.limiter, caller.token_id)
    return caller


CallerDep = Annotated[Caller, Depends(current_caller)]
StateDep = Annotated[State, Depends(_state)]
Limit = Annotated[int, Query(ge=1, le=1000, description="page size")]
Cursor = Annotated[int, Query(ge=0, le=MAX_CURSOR)]


def _require(state: State, conn: psycopg.Connection, caller: Caller, team_id: uuid.UUID, needed: str,
             action: str) -> str:
    """The caller's role in the team if it is at least `needed`; otherwise an audited 404 or 403.

    Non-members get 404, as if the team did not exist: ids of other teams reveal nothing.
    """
    role = auth.role_in(conn, team_id, caller.user_id)
    if role is None:
        raise Refused(404, "no such team", caller, action, team_id=team_id, detail={"reason": "not a member"})
    if not auth.at_least(role, needed):
        raise Refused(403, f"this needs the {needed} role in the team; you are {role}", caller, action,
                      team_id=team_id, detail={"reason": f"needs {needed}, has {role}"})
    return role


def _operator_or_self(state: State, caller: Caller, user_id: uuid.UUID, action: str) -> None:
    if not (caller.is_operator or caller.user_id == user_id):
        raise Refused(403, "only the user themself or an operator may do this", caller, action, target=user_id)


def _not_found(state: State, caller: Caller, action: str, team_id: uuid.UUID, target: Any) -> HTTPException:
    return Refused(404, "no such memory", caller, action, outcome="not_found", team_id=team_id, target=target)


def _team_out(row: dict[str, Any]) -> TeamOut:
    return TeamOut(id=row["id"], name=row["name"], role=row["role"], created_at=row["created_at"])


# -- routes -----------------------------------------------------------------------------------------
def _routes(app: FastAPI) -> None:  # noqa: C901 - one flat list of endpoints reads best
    @app.get("/v1/health", tags=["service"])
    def health(state: StateDep) -> dict[str, Any]:
        """Liveness and the embedder in use (no token needed)."""
        with state.pool.connection() as conn:
            conn.execute("SELECT 1")
        return {"status": "ok", "dimension": state.embedder.dimension, "version": API_VERSION}

    # users and tokens
    @app.get("/v1/me", response_model=MeOut, tags=["users"])
    def me(state: StateDep, caller: CallerDep) -> MeOut:
        with state.pool.connection() as conn:
            user = conn.execute("SELECT * FROM users WHERE id = %s", (caller.user_id,)).fetchone()
            teams = conn.execute("SELECT t.*, m.role FROM teams t JOIN members m ON m.team_id = t.id"
                                 " WHERE m.user_id = %s ORDER BY t.created_at", (caller.user_id,)).fetchall()
            audit.record(conn, caller, "me.read")
        return MeOut(user=UserOut(**user), teams=[_team_out(t) for t in teams])

    @app.post("/v1/users", response_model=UserCreated, status_code=201, tags=["users"])
    def create_user(body: UserIn, state: StateDep, caller: CallerDep) -> UserCreated:
        """Operators only: a new user and their first token (shown once)."""
        if not caller.is_operator:
            raise Refused(403, "only operators create users", caller, "user.create")
        with state.pool.connection() as conn:
            user = auth.create_user(conn, body.name, body.operator)
            token = auth.issue_token(conn, user["id"], "first")
            audit.record(conn, caller, "user.create", target=user["id"], detail={"operator": body.operator})
        return UserCreated(user=UserOut(**user), token=TokenCreated(**token))

    @app.get("/v1/users/{user_id}/export", response_model=UserExport, tags=["users"])
    def export_user(user_id: uuid.UUID, state: StateDep, caller: CallerDep) -> UserExport:
        """Everything stored about one user: profile, memberships, token metadata, the memories
        they created, and the audit records of their actions (the user themself or an operator)."""
        _operator_or_self(state, caller, user_id, "user.export")
        with state.pool.connection() as conn:
            user = conn.execute("SELECT * FROM users WHERE id = %s", (user_id,)).fetchone()
            if user is None:
                raise HTTPException(404, "no such user")
            teams = conn.execute("SELECT t.*, m.role FROM teams t JOIN members m ON m.team_id = t.id"
                                 " WHERE m.user_id = %s", (user_id,)).fetchall()
            tokens = conn.execute("SELECT id, name, created_at, expires_at, revoked_at FROM tokens WHERE user_id = %s"
                                  " ORDER BY created_at", (user_id,)).fetchall()
            rows = conn.execute(f"SELECT {memories.COLUMNS} FROM memories WHERE created_by = %s AND NOT deleted"
                                " ORDER BY num", (user_id,)).fetchall()
            records = conn.execute("SELECT * FROM audit WHERE user_id = %s ORDER BY id", (user_id,)).fetchall()
            audit.record(conn, caller, "user.export", target=user_id, detail={"memories": len(rows)})
        return UserExport(user=UserOut(**user), memberships=[_team_out(t) for t in teams],
                          tokens=[TokenOut(**t) for t in tokens], memories=[MemoryOut(**r) for r in rows],
                          audit=records)

    @app.delete("/v1/users/{user_id}", response_model=EraseOut, tags=["users"])
    def erase_user(user_id: uuid.UUID, state: StateDep, caller: CallerDep) -> EraseOut:
        """Erase one user: the memories they created become tombstones (content and vectors gone,
        devices learn of it on their next pull), their tokens, memberships and profile are deleted.
        Audit records stay, naming only the random user id. Where they were the only owner, the
        next member by rank (admin, writer, reader; earliest first) becomes owner; a team with no
        other member is deleted."""
        _operator_or_self(state, caller, user_id, "user.erase")
        with state.pool.connection() as conn:
            if conn.execute("SELECT 1 FROM users WHERE id = %s FOR UPDATE", (user_id,)).fetchone() is None:
                raise HTTPException(404, "no such user")
            _hand_over_ownership(conn, caller, user_id)
            erased = memories.erase_authored(conn, user_id)
            tokens = conn.execute("DELETE FROM tokens WHERE user_id = %s", (user_id,)).rowcount
            members = conn.execute("DELETE FROM members WHERE user_id = %s", (user_id,)).rowcount
            conn.execute("DELETE FROM users WHERE id = %s", (user_id,))
            audit.record(conn, caller, "user.erase", target=user_id, detail={"memories": erased})
        return EraseOut(user_id=user_id, memories_erased=erased, tokens_deleted=tokens, memberships_deleted=members)

    @app.post("/v1/tokens", response_model=TokenCreated, status_code=201, tags=["users"])
    def create_token(body: TokenIn, state: StateDep, caller: CallerDep) -> TokenCreated:
        """A new token for the caller (the secret is in the response only)."""
        with state.pool.connection() as conn:
            expires = (memories.now() + timedelta(days=body.expires_in_days)) if body.expires_in_days else None
            token = auth.issue_token(conn, caller.user_id, body.name, expires)
            audit.record(conn, caller, "token.create", target=token["id"])
        return TokenCreated(**token)

    @app.get("/v1/tokens", response_model=list[TokenOut], tags=["users"])
    def list_tokens(state: StateDep, caller: CallerDep) -> list[TokenOut]:
        with state.pool.connection() as conn:
            rows = conn.execute("SELECT id, name, created_at, expires_at, revoked_at FROM tokens WHERE user_id = %s"
                                " ORDER BY created_at", (caller.user_id,)).fetchall()
            audit.record(conn, caller, "token.list")
        return [TokenOut(**r) for r in rows]

    @app.delete("/v1/tokens/{token_id}", status_code=204, tags=["users"])
    def revoke_token(token_id: uuid.UUID, state: StateDep, caller: CallerDep) -> None:
        with state.pool.connection() as conn:
            row = conn.execute("UPDATE tokens SET revoked_at = now() WHERE id = %s AND user_id = %s"
                               " AND revoked_at IS NULL RETURNING id", (token_id, caller.user_id)).fetchone()
            audit.record(conn, caller, "token.revoke", target=token_id, outcome="ok" if row else "not_found")
        if row is None:
            raise HTTPException(404, "no such live token of yours")

    # teams and members
    @app.post("/v1/teams", response_model=TeamOut, status_code=201, tags=["teams"])
    def create_team(body: TeamIn, state: StateDep, caller: CallerDep) -> TeamOut:
        """A new team namespace; the caller becomes its owner."""
        with state.pool.connection() as conn:
            team = conn.execute("INSERT INTO teams (id, name) VALUES (%s, %s) RETURNING *",
                                (uuid.uuid4(), body.name)).fetchone()
            conn.execute("INSERT INTO members (team_id, user_id, role) VALUES (%s, %s, 'owner')",
                         (team["id"], caller.user_id))
            audit.record(conn, caller, "team.create", team_id=team["id"])
        return _team_out({**team, "role": "owner"})

    @app.get("/v1/teams", response_model=list[TeamOut], tags=["teams"])
    def list_teams(state: StateDep, caller: CallerDep) -> list[TeamOut]:
        """The caller's teams (and roles)."""
        with state.pool.connection() as conn:
            rows = conn.execute("SELECT t.*, m.role FROM teams t JOIN members m ON m.team_id = t.id"
                                " WHERE m.user_id = %s ORDER BY t.created_at", (caller.user_id,)).fetchall()
            audit.record(conn, caller, "team.list")
        return [_team_out(r) for r in rows]

    @app.delete("/v1/teams/{team_id}", status_code=204, tags=["teams"])
    def delete_team(team_id: uuid.UUID, state: StateDep, caller: CallerDep) -> None:
        """Owners only: the team, its members and all its memories are deleted."""
        with state.pool.connection() as conn:
            _require(state, conn, caller, team_id, "owner", "team.delete")
            conn.execute("DELETE FROM teams WHERE id = %s", (team_id,))
            audit.record(conn, caller, "team.delete", team_id=team_id)
        state.search.forget_team(team_id)

    @app.get("/v1/teams/{team_id}/members", response_model=list[MemberOut], tags=["teams"])
    def list_members(team_id: uuid.UUID, state: StateDep, caller: CallerDep) -> list[MemberOut]:
        with state.pool.connection() as conn:
            _require(state, conn, caller, team_id, "reader", "member.list")
            rows = conn.execute("SELECT m.user_id, u.name, m.role FROM members m JOIN users u ON u.id = m.user_id"
                                " WHERE m.team_id = %s ORDER BY m.added_at", (team_id,)).fetchall()
            audit.record(conn, caller, "member.list", team_id=team_id)
        return [MemberOut(**r) for r in rows]

    @app.put("/v1/teams/{team_id}/members/{user_id}", response_model=MemberOut, tags=["teams"])
    def set_member(team_id: uuid.UUID, user_id: uuid.UUID, body: MemberIn, state: StateDep,
                   caller: CallerDep) -> MemberOut:
        """Add a user to the team or change their role (admins; only owners grant or change owner)."""
        with state.pool.connection() as conn:
            role = _require(state, conn, caller, team_id, "admin", "member.set")
            conn.execute("SELECT 1 FROM teams WHERE id = %s FOR UPDATE", (team_id,))  # one role change at a time
            user = conn.execute("SELECT id, name FROM users WHERE id = %s", (user_id,)).fetchone()
            if user is None:
                raise HTTPException(404, "no such user")
            old = auth.role_in(conn, team_id, user_id)
            if "owner" in (body.role, old) and role != "owner":
                raise Refused(403, "only owners grant or change the owner role", caller, "member.set",
                              team_id=team_id, target=user_id)
            if old == "owner" and body.role != "owner" and _owners(conn, team_id) == 1:
                raise HTTPException(409, "a team keeps at least one owner")
            conn.execute("INSERT INTO members (team_id, user_id, role) VALUES (%s, %s, %s)"
                         " ON CONFLICT (team_id, user_id) DO UPDATE SET role = EXCLUDED.role",
                         (team_id, user_id, body.role))
            audit.record(conn, caller, "member.set", team_id=team_id, target=user_id,
                         detail={"role": body.role, "was": old})
        return MemberOut(user_id=user_id, name=user["name"], role=body.role)

    @app.delete("/v1/teams/{team_id}/members/{user_id}", status_code=204, tags=["teams"])
    def remove_member(team_id: uuid.UUID, user_id: uuid.UUID, state: StateDep, caller: CallerDep) -> None:
        with state.pool.connection() as conn:
            role = _require(state, conn, caller, team_id, "admin", "member.remove")
            conn.execute("SELECT 1 FROM teams WHERE id = %s FOR UPDATE", (team_id,))
            old = auth.role_in(conn, team_id, user_id)
            if old is None:
                raise HTTPException(404, "no such member")
            if old == "owner" and role != "owner":
                raise Refused(403, "only owners remove owners", caller, "member.remove", team_id=team_id,
                              target=user_id)
            if old == "owner" and _owners(conn, team_id) == 1:
                raise HTTPException(409, "a team keeps at least one owner")
            conn.execute("DELETE FROM members WHERE team_id = %s AND user_id = %s", (team_id, user_id))
            audit.record(conn, caller, "member.remove", team_id=team_id, target=user_id)

    @app.get("/v1/teams/{team_id}/audit", response_model=AuditPage, tags=["audit"])
    def team_audit(team_id: uuid.UUID, state: StateDep, caller: CallerDep, limit: Limit = 100,
                   before: Annotated[int | None, Query(ge=1, le=MAX_CURSOR)] = None) -> AuditPage:
        """The team's audit records, newest first (admins and owners)."""
        with state.pool.connection() as conn:
            _require(state, conn, caller, team_id, "admin", "audit.read")
            rows, nxt = audit.page(conn, team_id=team_id, before=before, limit=limit)
            audit.record(conn, caller, "audit.read", team_id=team_id)
        return AuditPage(items=rows, next_before=nxt)

    @app.get("/v1/audit", response_model=AuditPage, tags=["audit"])
    def all_audit(state: StateDep, caller: CallerDep, limit: Limit = 100,
                  before: Annotated[int | None, Query(ge=1, le=MAX_CURSOR)] = None,
                  user_id: uuid.UUID | None = None, team_id: uuid.UUID | None = None) -> AuditPage:
        """Every audit record, newest first, optionally for one user or team (operators)."""
        if not caller.is_operator:
            raise Refused(403, "only operators read the whole audit log", caller, "audit.read")
        with state.pool.connection() as conn:
            rows, nxt = audit.page(conn, team_id=team_id, user_id=user_id, before=before, limit=limit)
            audit.record(conn, caller, "audit.read", detail={"user_id": str(user_id) if user_id else None,
                                                             "team_id": str(team_id) if team_id else None})
        return AuditPage(items=rows, next_before=nxt)

    # memories
    @app.post("/v1/teams/{team_id}/memories", response_model=MemoryOut, status_code=201, tags=["memories"])
    def add_memory(team_id: uuid.UUID, body: MemoryIn, state: StateDep, caller: CallerDep) -> MemoryOut:
        """Embed and store a memory (writers). A client-chosen `id` already used in the team is a 409."""
        vector = state.embedder.encode_documents([body.text])[0]
        memory_id = body.id or uuid.uuid4()
        with state.pool.connection() as conn:
            _require(state, conn, caller, team_id, "writer", "memory.add")
            row = memories.insert(conn, team_id, caller.user_id, memory_id, body.model_dump(), vector)
            if row is None:
                raise HTTPException(409, "this team already has a memory (or tombstone) with that id")
            audit.record(conn, caller, "memory.add", team_id=team_id, target=memory_id)
        return MemoryOut(**row)

    @app.get("/v1/teams/{team_id}/memories", response_model=MemoryPage, tags=["memories"])
    def list_memories(team_id: uuid.UUID, state: StateDep, caller: CallerDep, limit: Limit = 100,
                      cursor: Cursor = 0) -> MemoryPage:
        """The team's memories, oldest first, a page at a time."""
        with state.pool.connection() as conn:
            _require(state, conn, caller, team_id, "reader", "memory.list")
            rows, nxt = memories.page(conn, team_id, cursor, limit)
            audit.record(conn, caller, "memory.list", team_id=team_id, detail={"count": len(rows)})
        return MemoryPage(items=[MemoryOut(**r) for r in rows], next_cursor=nxt)

    @app.get("/v1/teams/{team_id}/memories/{memory_id}", response_model=MemoryOut, tags=["memories"])
    def get_memory(team_id: uuid.UUID, memory_id: uuid.UUID, state: StateDep, caller: CallerDep) -> MemoryOut:
        with state.pool.connection() as conn:
            _require(state, conn, caller, team_id, "reader", "memory.get")
            row = memories.get(conn, team_id, memory_id)
            if row is None:
                raise _not_found(state, caller, "memory.get", team_id, memory_id)
            audit.record(conn, caller, "memory.get", team_id=team_id, target=memory_id)
        return MemoryOut(**row)

    @app.patch("/v1/teams/{team_id}/memories/{memory_id}", response_model=MemoryOut, tags=["memories"])
    def update_memory(team_id: uuid.UUID, memory_id: uuid.UUID, body: MemoryPatch, state: StateDep,
                      caller: CallerDep) -> MemoryOut:
        fields = body.model_dump(exclude_unset=True)
        if fields.get("text") is None:
            fields.pop("text", None)
        if "kind" in fields and fields["kind"] is None:
            raise HTTPException(422, "kind cannot be null")
        if "tags" in fields and fields["tags"] is None:
            fields["tags"] = []
        vector = state.embedder.encode_documents([fields["text"]])[0] if "text" in fields else None
        with state.pool.connection() as conn:
            _require(state, conn, caller, team_id, "writer", "memory.update")
            row = memories.update(conn, team_id, memory_id, fields, vector)
            if row is None:
                raise _not_found(state, caller, "memory.update", team_id, memory_id)
            audit.record(conn, caller, "memory.update", team_id=team_id, target=memory_id,
                         detail={"fields": sorted(fields)})
        return MemoryOut(**row)

    @app.delete("/v1/teams/{team_id}/memories/{memory_id}", status_code=204, tags=["memories"])
    def delete_memory(team_id: uuid.UUID, memory_id: uuid.UUID, state: StateDep, caller: CallerDep) -> None:
        """Delete a memory; a tombstone (id and time only) stays so synced devices delete it too."""
        with state.pool.connection() as conn:
            _require(state, conn, caller, team_id, "writer", "memory.delete")
            if not memories.delete(conn, team_id, memory_id):
                raise _not_found(state, caller, "memory.delete", team_id, memory_id)
            audit.record(conn, caller, "memory.delete", team_id=team_id, target=memory_id)

    @app.post("/v1/teams/{team_id}/search", response_model=list[HitOut], tags=["memories"])
    def search(team_id: uuid.UUID, body: SearchIn, state: StateDep, caller: CallerDep) -> list[HitOut]:
        """Hybrid search in one team, with the local runtime's semantics and filters."""
        with state.pool.connection() as conn:
            _require(state, conn, caller, team_id, "reader", "memory.search")
            hits = state.search.search(conn, team_id, body)
            audit.record(conn, caller, "memory.search", team_id=team_id,
                         detail={"query_sha256": hashlib.sha256(body.query.encode()).hexdigest(),
                                 "hits": len(hits), "mode": body.mode})
        return [HitOut(**h) for h in hits]

    # sync
    @app.post("/v1/teams/{team_id}/sync/push", response_model=PushOut, tags=["sync"])
    def push(team_id: uuid.UUID, body: PushIn, state: StateDep, caller: CallerDep) -> PushOut:
        """Apply a device's changes (client-generated ids; retries are no-ops) under the conflict rule:
        the newer `updated_at` wins, on a tie the server's version stays. All or nothing."""
        if len({c.id for c in body.changes}) != len(body.changes):
            raise HTTPException(422, "a push names each memory id at most once")
        missing = [str(c.id) for c in body.changes if not c.deleted and c.text is None]
        if missing:
            raise HTTPException(422, f"changes that are not deletes need a text: {', '.join(missing[:5])}")
        upserts = [c for c in body.changes if not c.deleted]
        encoded = state.embedder.encode_documents([c.text for c in upserts]) if upserts else []
        vectors = {c.id: v for c, v in zip(upserts, encoded)}
        with state.pool.connection() as conn:
            _require(state, conn, caller, team_id, "writer", "sync.push")
            results = memories.push(conn, team_id, caller.user_id, body.changes, vectors)
            counts: dict[str, int] = {}
            for r in results:
                counts[r["status"]] = counts.get(r["status"], 0) + 1
            audit.record(conn, caller, "sync.push", team_id=team_id, detail=counts)
        return PushOut(results=[{**r, "current": ChangeOut(**r["current"]) if r["current"] else None}
                                for r in results])

    @app.get("/v1/teams/{team_id}/sync/pull", response_model=PullOut, tags=["sync"])
    def pull(team_id: uuid.UUID, state: StateDep, caller: CallerDep, cursor: Cursor = 0,
             limit: Limit = 500) -> PullOut:
        """Changes with a sequence above `cursor`, oldest first, tombstones included."""
        with state.pool.connection() as conn:
            _require(state, conn, caller, team_id, "reader", "sync.pull")
            rows, last, more = memories.pull(conn, team_id, cursor, limit)
            audit.record(conn, caller, "sync.pull", team_id=team_id, detail={"cursor": cursor, "count": len(rows)})
        return PullOut(changes=[ChangeOut(**r) for r in rows], cursor=last, has_more=more)


def _owners(conn: psycopg.Connection, team_id: uuid.UUID) -> int:
    return conn.execute("SELECT count(*) AS n FROM members WHERE team_id = %s AND role = 'owner'",
                        (team_id,)).fetchone()["n"]


def _hand_over_ownership(conn: psycopg.Connection, caller: Caller, user_id: uuid.UUID) -> None:
    """Before erasing a user: no team may be left without an owner (erasure is never refused)."""
    sole = conn.execute("SELECT m.team_id FROM members m WHERE m.user_id = %s AND m.role = 'owner' AND NOT EXISTS"
                        " (SELECT 1 FROM members o WHERE o.team_id = m.team_id AND o.role = 'owner'"
                        " AND o.user_id <> %s)", (user_id, user_id)).fetchall()
    for row in sole:
        team_id = row["team_id"]
        heir = conn.execute("SELECT user_id FROM members WHERE team_id = %s AND user_id <> %s"
                            " ORDER BY array_position(ARRAY['admin', 'writer', 'reader'], role), added_at LIMIT 1",
                            (team_id, user_id)).fetchone()
        if heir is None:
            conn.execute("DELETE FROM teams WHERE id = %s", (team_id,))
            audit.record(conn, caller, "team.delete", team_id=team_id, detail={"reason": "only member erased"})
            continue
        conn.execute("UPDATE members SET role = 'owner' WHERE team_id = %s AND user_id = %s",
                     (team_id, heir["user_id"]))
        audit.record(conn, caller, "member.set", team_id=team_id, target=heir["user_id"],
                     detail={"role": "owner", "reason": "the only owner was erased"})
