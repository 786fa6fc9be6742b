"""A typed Python client for the cloud memory service (httpx), the hybrid runtime's way in.

    from apex_models.cloud.client import CloudClient

    with CloudClient("https://memory.example.com", token=os.environ["APEX_TOKEN"]) as cloud:
        team = cloud.create_team("backend")
        cloud.add(team.id, "We pinned psycopg to 3.1", kind="decision", tags=["db"])
        hits = cloud.search(team.id, "why is the postgres driver pinned?", k=5)
        page = cloud.pull(team.id, cursor=0)           # then pull(cursor=page.cursor) until not has_more
        cloud.push(team.id, [ChangeIn(id=uuid4(), updated_at=now, text="...")])

Responses are the server's own pydantic models (apex_models.cloud.schemas), so the client
and the OpenAPI spec cannot drift apart. Errors raise CloudError with the HTTP status and
the server's message; 429 carries `retry_after` seconds.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Iterator, Sequence

import httpx

from apex_models.cloud.schemas import (AuditPage, ChangeIn, EraseOut, HitOut, MemberOut, MemoryOut, MemoryPage, MeOut,
                                       PullOut, PushOut, TeamOut, TokenCreated, TokenOut, UserCreated, UserExport)

TeamId = uuid.UUID | str


class CloudError(Exception):
    """The server refused or failed a request."""

    def __init__(self, status: int, detail: Any, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class CloudClient:
    """One token's view of the service. Pass `http` to reuse an httpx.Client (tests pass an ASGI one)."""

    def __init__(self, base_url: str = "", token: str | None = None, *, http: httpx.Client | None = None,
                 timeout: float = 30.0) -> None:
        self._own = http is None
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def close(self) -> None:
        if self._own:
            self._http.close()

    def __enter__(self) -> "CloudClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def with_token(self, token: str) -> "CloudClient":
        """The same connection, another identity (the connection stays owned by this client)."""
        other = CloudClient(token=token, http=self._http)
        return other

    def _call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        response = self._http.request(method, path, json=json, params=params or None, headers=self._headers)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            retry = response.headers.get("Retry-After")
            raise CloudError(response.status_code, detail, float(retry) if retry else None)
        return None if response.status_code == 204 else response.json()

    # users and tokens
    def health(self) -> dict[str, Any]:
        return self._call("GET", "/v1/health")

    def me(self) -> MeOut:
        return MeOut.model_validate(self._call("GET", "/v1/me"))

    def create_user(self, name: str, operator: bool = False) -> UserCreated:
        return UserCreated.model_validate(self._call("POST", "/v1/users", json={"name": name, "operator": operator}))

    def create_token(self, name: str = "token", expires_in_days: int | None = None) -> TokenCreated:
        return TokenCreated.model_validate(self._call("POST", "/v1/tokens", json={
            "name": name, "expires_in_days": expires_in_days}))

    def tokens(self) -> list[TokenOut]:
        return [TokenOut.model_validate(t) for t in self._call("GET", "/v1/tokens")]

    def revoke_token(self, token_id: uuid.UUID | str) -> None:
        self._call("DELETE", f"/v1/tokens/{token_id}")

    def export_user(self, user_id: uuid.UUID | str) -> UserExport:
        return UserExport.model_validate(self._call("GET", f"/v1/users/{user_id}/export"))

    def erase_user(self, user_id: uuid.UUID | str) -> EraseOut:
        return EraseOut.model_validate(self._call("DELETE", f"/v1/users/{user_id}"))

    # teams
    def create_team(self, name: str) -> TeamOut:
        return TeamOut.model_validate(self._call("POST", "/v1/teams", json={"name": name}))

    def teams(self) -> list[TeamOut]:
        return [TeamOut.model_validate(t) for t in self._call("GET", "/v1/teams")]

    def delete_team(self, team: TeamId) -> None:
        self._call("DELETE", f"/v1/teams/{team}")

    def members(self, team: TeamId) -> list[MemberOut]:
        return [MemberOut.model_validate(m) for m in self._call("GET", f"/v1/teams/{team}/members")]

    def set_member(self, team: TeamId, user_id: uuid.UUID | str, role: str) -> MemberOut:
        return MemberOut.model_validate(self._call("PUT", f"/v1/teams/{team}/members/{user_id}",
                                                   json={"role": role}))

    def remove_member(self, team: TeamId, user_id: uuid.UUID | str) -> None:
        self._call("DELETE", f"/v1/teams/{team}/members/{user_id}")

    def audit(self, team: TeamId | None = None, *, limit: int = 100, before: int | None = None,
              user_id: uuid.UUID | str | None = None) -> AuditPage:
        """A team's records (admins), or with no team the whole log (operators), newest first."""
        if team is not None:
            return AuditPage.model_validate(self._call("GET", f"/v1/teams/{team}/audit",
                                                       params={"limit": limit, "before": before}))
        return AuditPage.model_validate(self._call("GET", "/v1/audit", params={
            "limit": limit, "before": before, "user_id": str(user_id) if user_id else None}))

    # memories
    def add(self, team: TeamId, text: str, *, kind: str = "note", tags: Sequence[str] = (),
            source: str | None = None, memory_id: uuid.UUID | str | None = None) -> MemoryOut:
        body = {"text": text, "kind": kind, "tags": list(tags), "source": source,
                "id": str(memory_id) if memory_id else None}
        return MemoryOut.model_validate(self._call("POST", f"/v1/teams/{team}/memories", json=body))

    def get(self, team: TeamId, memory_id: uuid.UUID | str) -> MemoryOut:
        return MemoryOut.model_validate(self._call("GET", f"/v1/teams/{team}/memories/{memory_id}"))

    def update(self, team: TeamId, memory_id: uuid.UUID | str, **fields: Any) -> MemoryOut:
        return MemoryOut.model_validate(self._call("PATCH", f"/v1/teams/{team}/memories/{memory_id}", json=fields))

    def delete(self, team: TeamId, memory_id: uuid.UUID | str) -> None:
        self._call("DELETE", f"/v1/teams/{team}/memories/{memory_id}")

    def list_page(self, team: TeamId, *, limit: int = 100, cursor: int = 0) -> MemoryPage:
        return MemoryPage.model_validate(self._call("GET", f"/v1/teams/{team}/memories",
                                                    params={"limit": limit, "cursor": cursor}))

    def memories(self, team: TeamId, page_size: int = 100) -> Iterator[MemoryOut]:
        """Every memory of the team, page by page."""
        cursor: int | None = 0
        while cursor is not None:
            page = self.list_page(team, limit=page_size, cursor=cursor)
            yield from page.items
            cursor = page.next_cursor

    def search(self, team: TeamId, query: str, k: int = 10, *, kind: str | Sequence[str] | None = None,
               tags: Sequence[str] | None = None, since: datetime | str | None = None,
               until: datetime | str | None = None, source_prefix: str | None = None,
               mode: str = "hybrid") -> list[HitOut]:
        """The runtime's MemoryStore.search, in one team."""
        body = {"query": query, "k": k, "kind": [kind] if isinstance(kind, str) else (list(kind) if kind else None),
                "tags": list(tags) if tags else None, "since": _iso(since), "until": _iso(until),
                "source_prefix": source_prefix, "mode": mode}
        return [HitOut.model_validate(h) for h in self._call("POST", f"/v1/teams/{team}/search", json=body)]

    # sync
    def push(self, team: TeamId, changes: Sequence[ChangeIn]) -> PushOut:
        """Send local changes (safe to retry: the same change twice is reported `duplicate`)."""
        body = {"changes": [c.model_dump(mode="json") for c in changes]}
        return PushOut.model_validate(self._call("POST", f"/v1/teams/{team}/sync/push", json=body))

    def pull(self, team: TeamId, cursor: int = 0, limit: int = 500) -> PullOut:
        """Changes above `cursor`; keep the returned `cursor` and pull again while `has_more`."""
        return PullOut.model_validate(self._call("GET", f"/v1/teams/{team}/sync/pull",
                                                 params={"cursor": cursor, "limit": limit}))


def _iso(value: datetime | str | None) -> str | None:
    return value.isoformat() if isinstance(value, datetime) else value
