"""Tenant isolation: no read or write across teams, by any endpoint, search and sync included."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import pytest

from cloud_fixtures import fresh_database, new_user, running_app

pytest.importorskip("fastapi")

SECRET = "Team A's deploy key rotation happens on the first Monday of each month"


@pytest.fixture(scope="module")
def world(postgres_url, minilm_embedder):
    """alice owns team A (with a memory), bob owns team B; bob is a member of nothing else."""
    with fresh_database(postgres_url) as url, running_app(url, minilm_embedder) as http:
        _, alice = new_user(http, "alice")
        bob_id, bob = new_user(http, "bob")
        a, b = alice.create_team("A"), bob.create_team("B")
        memory = alice.add(a.id, SECRET, kind="decision", tags=["ops"])
        yield http, alice, bob, bob_id, a.id, b.id, memory.id


def _status(call) -> int:
    from apex_models.cloud.client import CloudError

    try:
        call()
    except CloudError as exc:
        return exc.status
    return 200


def test_no_endpoint_reads_or_writes_another_team(world) -> None:
    from apex_models.cloud.schemas import ChangeIn

    http, alice, bob, bob_id, a, b, memory = world
    now = datetime.now(timezone.utc)
    attempts = {
        "get": lambda: bob.get(a, memory),
        "list": lambda: bob.list_page(a),
        "search": lambda: bob.search(a, "deploy key rotation"),
        "update": lambda: bob.update(a, memory, text="overwritten by bob"),
        "delete": lambda: bob.delete(a, memory),
        "add": lambda: bob.add(a, "planted by bob"),
        "push": lambda: bob.push(a, [ChangeIn(id=memory, updated_at=now, text="pushed by bob")]),
        "push tombstone": lambda: bob.push(a, [ChangeIn(id=memory, updated_at=now, deleted=True)]),
        "pull": lambda: bob.pull(a),
        "members": lambda: bob.members(a),
        "add member": lambda: bob.set_member(a, bob_id, "owner"),
        "remove member": lambda: bob.remove_member(a, alice.me().user.id),
        "audit": lambda: bob.audit(a),
        "delete team": lambda: bob.delete_team(a),
        "export alice": lambda: bob.export_user(alice.me().user.id),
        "erase alice": lambda: bob.erase_user(alice.me().user.id),
    }
    statuses = {name: _status(call) for name, call in attempts.items()}
    team_scoped = [n for n in statuses if n not in ("export alice", "erase alice")]
    assert all(statuses[n] == 404 for n in team_scoped), statuses     # a team you are not in does not exist
    assert statuses["export alice"] == statuses["erase alice"] == 403
    # nothing changed in team A
    kept = alice.get(a, memory)
    assert kept.text == SECRET
    assert [m.id for m in alice.memories(a)] == [memory]
    assert [c.id for c in alice.pull(a).changes] == [memory]
    assert {m.user_id for m in alice.members(a)} == {alice.me().user.id}


def test_same_id_in_another_team_is_another_memory(world) -> None:
    """Client-generated ids are per team: bob pushing A's memory id into B creates B's own row."""
    from apex_models.cloud.schemas import ChangeIn

    http, alice, bob, bob_id, a, b, memory = world
    later = datetime(2100, 1, 1, tzinfo=timezone.utc)
    result = bob.push(b, [ChangeIn(id=memory, updated_at=later, text="bob's note with a colliding id")])
    assert result.results[0].status == "applied"
    assert bob.get(b, memory).text == "bob's note with a colliding id"
    assert alice.get(a, memory).text == SECRET
    assert bob.add(b, "another", memory_id=uuid.uuid4()).team_id == b


def test_search_sync_and_audit_stay_inside_the_team(world) -> None:
    http, alice, bob, bob_id, a, b, memory = world
    bob.add(b, "B's notes about the staging cluster")
    for mode in ("hybrid", "dense", "keyword"):
        hits = bob.search(b, SECRET, k=50, mode=mode)
        assert all(SECRET not in h.text for h in hits), mode
    assert all(SECRET not in (c.text or "") for c in bob.pull(b, cursor=0).changes)
    assert {r.team_id for r in bob.audit(b, limit=1000).items} == {b}
    mine = bob.export_user(bob_id)
    assert all(m.team_id == b for m in mine.memories)
    assert [t.id for t in bob.teams()] == [b]
