"""The hybrid runtime's view of one team in the cloud service (apex_models.cloud.client).

The local store names memories with 32 hex digits; the service with UUIDs: the same 128
bits, so one memory keeps one identity on every device and on the server.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from apex_models.cloud.client import CloudClient
from apex_models.cloud.schemas import ChangeIn


def _moment(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class TeamCloud:
    """`CloudPort` over a CloudClient and one team id."""

    def __init__(self, client: CloudClient, team_id: uuid.UUID | str) -> None:
        self.client, self.team_id = client, team_id

    def push(self, changes: list[dict[str, Any]]) -> list[str]:
        """Every change the server settled (applied, already had, or holds a newer version of:
        the conflict rule keeps the newer one, and the next pull brings it here)."""
        body = []
        for change in changes:
            deleted = change["op"] == "delete"
            body.append(ChangeIn(id=uuid.UUID(hex=change["id"]), updated_at=_moment(change["updated_at"]),
                                 deleted=deleted, text=None if deleted else change["text"],
                                 kind=change.get("kind") or "note", tags=change.get("tags") or [],
                                 source=change.get("source")))
        result = self.client.push(self.team_id, body)
        return [r.id.hex for r in result.results if r.status in ("applied", "duplicate", "stale")]

    def pull(self, cursor: int, limit: int) -> tuple[list[dict[str, Any]], int]:
        page = self.client.pull(self.team_id, cursor=cursor, limit=limit)
        changes = [{"id": c.id.hex, "op": "delete" if c.deleted else "upsert", "text": c.text, "kind": c.kind,
                    "tags": c.tags, "source": c.source, "updated_at": c.updated_at.isoformat()}
                   for c in page.changes]
        return changes, page.cursor

    def search(self, query: str, k: int, timeout_s: float) -> list[dict[str, Any]]:
        hits = self.client.search(self.team_id, query, k=k, timeout=timeout_s)
        return [{"id": h.id.hex, "score": h.score, "text": h.text, "kind": h.kind, "tags": h.tags,
                 "source": h.source} for h in hits]
