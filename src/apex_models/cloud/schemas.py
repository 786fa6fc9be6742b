"""Request and response bodies of the cloud API (they make its OpenAPI spec).

Every string that reaches PostgreSQL is checked here: NUL characters and unpaired
surrogates cannot be stored in a `text` column, so they are a 422, never a 500.
Naive datetimes are read as UTC, like the local runtime does.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

MAX_TEXT_CHARS = 32_000
MAX_BATCH = 500
Role = Literal["owner", "admin", "writer", "reader"]


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no unpaired surrogates)") from None
    return value


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value


def _nonblank(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_storable),
                 AfterValidator(_nonblank)]
Short = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_storable), AfterValidator(_nonblank)]
Tag = Annotated[str, Field(min_length=1, max_length=100), AfterValidator(_storable)]
Source = Annotated[str, Field(max_length=2048), AfterValidator(_storable)]
Moment = Annotated[datetime, AfterValidator(_utc)]
Tags = Annotated[list[Tag], Field(max_length=32)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MemoryIn(_In):
    """A memory to add. `id` may be client-generated (a UUID); the server makes one otherwise."""

    id: UUID | None = None
    text: Text
    kind: Short = "note"
    tags: Tags = []
    source: Source | None = None


class MemoryPatch(_In):
    """Fields to change; the text change re-embeds the memory."""

    text: Text | None = None
    kind: Short | None = None
    tags: Tags | None = None
    source: Source | None = None


class MemoryOut(BaseModel):
    id: UUID
    team_id: UUID
    text: str
    kind: str
    tags: list[str]
    source: str | None
    created_at: datetime
    updated_at: datetime
    seq: int


class MemoryPage(BaseModel):
    items: list[MemoryOut]
    next_cursor: int | None = Field(None, description="pass as `cursor` for the next page; null at the end")


class SearchIn(_In):
    """The local runtime's search: hybrid (dense + keyword, RRF), filters applied before the cut."""

    query: Annotated[str, Field(min_length=1, max_length=4096), AfterValidator(_storable), AfterValidator(_nonblank)]
    k: int = Field(10, ge=1, le=100)
    kind: Annotated[list[Short], Field(max_length=16)] | None = None
    tags: Tags | None = None
    since: Moment | None = None
    until: Moment | None = None
    source_prefix: Source | None = None
    mode: Literal["hybrid", "dense", "keyword"] = "hybrid"


class WhyOut(BaseModel):
    dense_rank: int | None = None
    dense_score: float | None = None
    keyword_rank: int | None = None
    keyword_score: float | None = None
    matched_terms: list[str] = []
    rerank_score: float | None = None
    retrievers: list[str] = []


class HitOut(BaseModel):
    id: UUID
    score: float
    text: str
    kind: str
    tags: list[str]
    source: str | None
    created_at: datetime
    updated_at: datetime
    why: WhyOut


class ChangeIn(_In):
    """One change a device pushes: an upsert, or a tombstone (`deleted: true`, content ignored)."""

    id: UUID
    updated_at: Moment = Field(description="when the device made this change; the newer change wins")
    deleted: bool = False
    text: Text | None = None
    kind: Short = "note"
    tags: Tags = []
    source: Source | None = None
    created_at: Moment | None = None


class ChangeOut(BaseModel):
    id: UUID
    seq: int
    deleted: bool
    text: str | None
    kind: str | None
    tags: list[str]
    source: str | None
    created_at: datetime
    updated_at: datetime


class PushIn(_In):
    changes: Annotated[list[ChangeIn], Field(min_length=1, max_length=MAX_BATCH)]


class PushResult(BaseModel):
    id: UUID
    status: Literal["applied", "duplicate", "stale"] = Field(
        description="applied: stored; duplicate: the server already had exactly this change (a retry); "
                    "stale: the server holds a newer change, returned in `current`")
    seq: int
    current: ChangeOut | None = None


class PushOut(BaseModel):
    results: list[PushResult]


class PullOut(BaseModel):
    changes: list[ChangeOut]
    cursor: int = Field(description="the highest sequence returned (or the one given); pull again from it")
    has_more: bool


class TeamIn(_In):
    name: Short


class TeamOut(BaseModel):
    id: UUID
    name: str
    role: Role
    created_at: datetime


class MemberIn(_In):
    role: Role


class MemberOut(BaseModel):
    user_id: UUID
    name: str
    role: Role


class UserIn(_In):
    name: Short
    operator: bool = False


class UserOut(BaseModel):
    id: UUID
    name: str
    is_operator: bool
    created_at: datetime


class TokenIn(_In):
    name: Short = "token"
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class TokenOut(BaseModel):
    id: UUID
    name: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="the secret itself: shown once, stored only as its SHA-256")


class UserCreated(BaseModel):
    user: UserOut
    token: TokenCreated


class MeOut(BaseModel):
    user: UserOut
    teams: list[TeamOut]


class AuditOut(BaseModel):
    id: int
    at: datetime
    user_id: UUID | None
    token_id: UUID | None
    team_id: UUID | None
    action: str
    target: str | None
    outcome: str
    detail: dict[str, Any]


class AuditPage(BaseModel):
    items: list[AuditOut]
    next_before: int | None = Field(None, description="pass as `before` for older records; null at the end")


class UserExport(BaseModel):
    user: UserOut
    memberships: list[TeamOut]
    tokens: list[TokenOut]
    memories: list[MemoryOut]
    audit: list[AuditOut]


class EraseOut(BaseModel):
    user_id: UUID
    memories_erased: int
    tokens_deleted: int
    memberships_deleted: int
