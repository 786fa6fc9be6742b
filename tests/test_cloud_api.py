"""The cloud memory service against a real PostgreSQL: auth and roles, memories and search
(the local runtime's semantics), sync, audit, export and erase, limits and bad input."""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime, timedelta, timezone

import numpy as np
import psycopg
import pytest

from cloud_fixtures import OPERATOR_TOKEN, client_for, fresh_database, new_user, running_app
from test_export_heads import heads_bundle  # noqa: F401  (a session fixture: one small bundle with a ranker)

pytest.importorskip("fastapi")

NOTES = [
    ("We pinned psycopg to 3.1 because 3.2 broke connection pooling on Alpine", "decision", ["db"], "requirements.txt"),
    ("readFile throws ENOENT when the config folder is missing; create it first", "error", ["fs"], "src/io.ts"),
    ("Use ruff format instead of black; CI checks formatting with ruff", "decision", ["lint"], ".ci/lint.sh"),
    ("def parse_duration(text): converts '1h30m' strings into seconds", "code", ["time"], "src/util/time.py"),
    ("The staging database is reset every Sunday night at 02:00 UTC", "note", ["db", "ops"], "docs/ops.md"),
    ("Redis cache keys expire after 15 minutes; raise TTL for the login store", "note", ["cache"], "docs/cache.md"),
    ("Flaky test test_upload_retry fails when the S3 mock starts slowly", "error", ["tests"], "tests/test_upload.py"),
    ("Kubernetes liveness probe hits /healthz every 10 seconds", "note", ["ops"], "deploy/k8s.yaml"),
]


@pytest.fixture(scope="module")
def http(postgres_url, minilm_embedder):
    with fresh_database(postgres_url) as url, running_app(url, minilm_embedder) as client:
        client.database_url = url
        yield client


def _team_with_notes(http, owner: str):
    _, client = new_user(http, owner)
    team = client.create_team("backend")
    ids = [client.add(team.id, text, kind=kind, tags=tags, source=source).id for text, kind, tags, source in NOTES]
    return team.id, client, ids


@pytest.fixture(scope="module")
def team(http):
    """alice owns a team holding NOTES (other tests add to it); (team id, alice's client, memory ids)."""
    return _team_with_notes(http, "alice")


def test_migrations_reach_head_and_rerun_cleanly(http) -> None:
    from apex_models.cloud.db import migrate

    migrate(http.database_url)  # a second upgrade is a no-op
    with psycopg.connect(http.database_url) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0001"


def test_tokens_are_required_and_stored_hashed(http) -> None:
    from apex_models.cloud.client import CloudClient, CloudError

    assert http.get("/v1/me").status_code == 401
    assert http.get("/v1/me", headers={"Authorization": "Bearer apex_not-a-real-token"}).status_code == 401
    user_id, bob = new_user(http, "bob")
    token = bob._headers["Authorization"].split()[1]
    assert bob.me().user.name == "bob"
    with psycopg.connect(http.database_url) as conn:
        stored = [r[0] for r in conn.execute("SELECT token_sha256 FROM tokens WHERE user_id = %s", (user_id,))]
        dump = conn.execute("SELECT string_agg(t::text, '') FROM tokens t").fetchone()[0]
    assert stored == [hashlib.sha256(token.encode()).digest()]
    assert token not in dump
    second = bob.create_token("laptop")
    laptop = client_for(http, second.token)
    assert laptop.me().user.id == user_id
    bob.revoke_token(second.id)
    with pytest.raises(CloudError) as denied:
        laptop.me()
    assert denied.value.status == 401
    assert isinstance(bob, CloudClient)


def test_roles_limit_what_each_member_may_do(http, team) -> None:
    from apex_models.cloud.client import CloudError

    team_id, alice, ids = team
    reader_id, reader = new_user(http, "rita")
    writer_id, writer = new_user(http, "walt")
    admin_id, admin = new_user(http, "ada")
    alice.set_member(team_id, reader_id, "reader")
    alice.set_member(team_id, writer_id, "writer")
    alice.set_member(team_id, admin_id, "admin")

    def status(call) -> int:
        try:
            call()
        except CloudError as exc:
            return exc.status
        return 200

    assert status(lambda: reader.search(team_id, "psycopg pin")) == 200
    assert status(lambda: reader.get(team_id, ids[0])) == 200
    assert status(lambda: reader.add(team_id, "nope")) == 403
    assert status(lambda: reader.delete(team_id, ids[0])) == 403
    assert status(lambda: writer.add(team_id, "a writer's note")) == 200
    assert status(lambda: writer.audit(team_id)) == 403
    assert status(lambda: writer.set_member(team_id, reader_id, "writer")) == 403
    assert status(lambda: admin.set_member(team_id, reader_id, "writer")) == 200
    assert status(lambda: admin.set_member(team_id, admin_id, "owner")) == 403   # admins cannot grant owner
    assert status(lambda: admin.audit(team_id)) == 200
    assert status(lambda: alice.set_member(team_id, uuid.UUID(int=0), "reader")) == 404
    assert status(lambda: alice.set_member(team_id, alice.me().user.id, "admin")) == 409  # the last owner stays
    assert status(lambda: admin.delete_team(team_id)) == 403
    assert status(lambda: reader.audit()) == 403                                  # operators only
    assert {m.role for m in alice.members(team_id)} == {"owner", "admin", "writer"}


def test_memories_crud_and_pagination(http, team) -> None:
    from apex_models.cloud.client import CloudError

    team_id, alice, ids = team
    first = alice.get(team_id, ids[0])
    assert (first.text, first.kind, first.tags, first.source) == NOTES[0][:2] + (NOTES[0][2], NOTES[0][3])
    seen = []
    cursor = 0
    while cursor is not None:
        page = alice.list_page(team_id, limit=3, cursor=cursor)
        assert len(page.items) <= 3
        seen += [m.id for m in page.items]
        cursor = page.next_cursor
    assert seen[:len(ids)] == ids and len(seen) == len(set(seen))
    own = uuid.uuid4()
    made = alice.add(team_id, "temporary note about gRPC deadlines", memory_id=own, tags=["tmp"])
    assert made.id == own
    with pytest.raises(CloudError) as again:
        alice.add(team_id, "same id twice", memory_id=own)
    assert again.value.status == 409
    changed = alice.update(team_id, own, text="gRPC deadlines default to 30 seconds in the payments client")
    assert changed.seq > made.seq and changed.tags == ["tmp"]
    assert alice.search(team_id, "payments client timeout", k=1, tags=["tmp"])[0].id == own
    alice.delete(team_id, own)
    with pytest.raises(CloudError) as gone:
        alice.get(team_id, own)
    assert gone.value.status == 404
    assert all(h.id != own for h in alice.search(team_id, "gRPC deadlines payments", k=20))


def test_search_matches_the_local_runtime(http, minilm_embedder, tmp_path) -> None:
    """Same memories, same embedder: the cloud's dense ranking is the local store's, filters
    select the same memories, and hybrid search finds the obvious answer first."""
    from apex_models.runtime import MemoryStore

    team_id, alice, ids = _team_with_notes(http, "sam")
    queries = ["why is the postgres driver pinned", "file not found error reading config",
               "which formatter do we use", "how long do cache entries live", "kubernetes health check"]
    with MemoryStore.open(tmp_path / "local", minilm_embedder, key=b"k" * 32) as local:
        for text, kind, tags, source in NOTES:
            local.add(text, kind=kind, tags=tags, source=source)
        text_of = {m.id: m.text for m in local.memories()}
        for q in queries:
            local_dense = [text_of[h.id] for h in local.search(q, k=5, mode="dense")]
            cloud_dense = [h.text for h in alice.search(team_id, q, k=5, mode="dense")]
            assert cloud_dense == local_dense, q
            assert alice.search(team_id, q, k=1)[0].text == local.search(q, k=1)[0].text, q
        for filters in ({"kind": "decision"}, {"tags": ["db"]}, {"tags": ["db", "ops"]},
                        {"source_prefix": "docs/"}, {"kind": ["error", "code"]}):
            local_set = {text_of[h.id] for h in local.search("database", k=20, **filters)}
            cloud_set = {h.text for h in alice.search(team_id, "database", k=20, **filters)}
            assert cloud_set == local_set, filters
    hit = alice.search(team_id, "readFile ENOENT", k=1, mode="keyword")[0]
    assert hit.text == NOTES[1][0] and set(hit.why.matched_terms) == {"read", "file", "enoent"}
    assert hit.why.retrievers == ["keyword"]
    future = datetime.now(timezone.utc) + timedelta(days=1)
    assert alice.search(team_id, "database", since=future) == []
    assert len(alice.search(team_id, "database", k=50, until=future)) >= len(NOTES) - 1


def test_search_rerank_hook_reorders_the_head(http, team, minilm_embedder) -> None:
    """A ranker (when the server has one) reorders the fused head and its score is reported."""
    from psycopg.rows import dict_row

    from apex_models.cloud.schemas import SearchIn
    from apex_models.cloud.search import SearchEngine

    team_id, _, _ = team
    by_length = SearchEngine(minilm_embedder, rerank=lambda query, texts: [float(len(t)) for t in texts])
    plain = SearchEngine(minilm_embedder)
    request = SearchIn(query="database cache", k=4)
    with psycopg.connect(http.database_url, row_factory=dict_row) as conn:
        reranked = by_length.search(conn, team_id, request)
        fused = plain.search(conn, team_id, request)
    assert [h["score"] for h in reranked] == sorted((h["score"] for h in reranked), reverse=True)
    assert all(h["why"]["rerank_score"] == float(len(h["text"])) for h in reranked)
    assert all(h["why"]["rerank_score"] is None for h in fused)
    assert [h["text"] for h in reranked] != [h["text"] for h in fused]


def test_sync_push_is_idempotent_and_pull_follows_the_feed(http, team) -> None:
    team_id, alice, _ = team
    start = alice.pull(team_id, cursor=0, limit=1000).cursor
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    from apex_models.cloud.schemas import ChangeIn

    a, b = uuid.uuid4(), uuid.uuid4()
    batch = [ChangeIn(id=a, updated_at=t0, text="offline note A about vendored wheels", tags=["sync"]),
             ChangeIn(id=b, updated_at=t0, text="offline note B about pip caches", kind="decision")]
    assert [r.status for r in alice.push(team_id, batch).results] == ["applied", "applied"]
    assert [r.status for r in alice.push(team_id, batch).results] == ["duplicate", "duplicate"]   # a retry
    pulled = alice.pull(team_id, cursor=start)
    assert [c.id for c in pulled.changes] == [a, b] and not pulled.has_more
    # an older edit loses and gets the server's version back; a newer one wins
    old = alice.push(team_id, [ChangeIn(id=a, updated_at=t0 - timedelta(hours=1), text="older text")]).results[0]
    assert old.status == "stale" and old.current.text == "offline note A about vendored wheels"
    tie = alice.push(team_id, [ChangeIn(id=a, updated_at=t0, text="same time, other text")]).results[0]
    assert tie.status == "stale"
    new = alice.push(team_id, [ChangeIn(id=a, updated_at=t0 + timedelta(hours=1), text="wheels live in vendor/")])
    assert new.results[0].status == "applied"
    assert alice.get(team_id, a).text == "wheels live in vendor/"
    # a tombstone travels through the feed
    gone = alice.push(team_id, [ChangeIn(id=b, updated_at=t0 + timedelta(hours=2), deleted=True)]).results[0]
    assert gone.status == "applied"
    later = alice.pull(team_id, cursor=pulled.cursor)
    assert [(c.id, c.deleted) for c in later.changes] == [(a, False), (b, True)]
    assert later.changes[1].text is None
    assert all(h.id != b for h in alice.search(team_id, "pip caches", k=20))
    # the feed pages without gaps or repeats, and sequences only grow
    seqs, cursor, more = [], start, True
    while more:
        page = alice.pull(team_id, cursor=cursor, limit=1)
        seqs += [c.seq for c in page.changes]
        cursor, more = page.cursor, page.has_more
    assert seqs == sorted(set(seqs)) and len(seqs) == 2


def test_concurrent_pushes_of_the_same_ids_all_succeed(http, team) -> None:
    """Pushes that touch the same memories in opposite orders serialise on the team, never deadlock."""
    from concurrent.futures import ThreadPoolExecutor

    from apex_models.cloud.schemas import ChangeIn

    team_id, alice, _ = team
    ids = [uuid.uuid4() for _ in range(6)]
    t0 = datetime(2026, 2, 1, tzinfo=timezone.utc)

    def push(worker: int) -> list[str]:
        order = ids if worker % 2 == 0 else ids[::-1]
        changes = [ChangeIn(id=i, updated_at=t0 + timedelta(seconds=worker), text=f"version {worker} of {n}")
                   for n, i in enumerate(order)]
        return [r.status for r in alice.push(team_id, changes).results]

    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(push, range(8)))
    assert all(len(o) == len(ids) for o in outcomes)
    assert {alice.get(team_id, i).text.split()[1] for i in ids} == {"7"}   # the newest change won everywhere


def test_audit_records_reads_writes_and_refusals_without_content(http, team) -> None:
    team_id, alice, ids = team
    alice.search(team_id, "secret query text", k=3)
    stranger_id, stranger = new_user(http, "mallory")
    with pytest.raises(Exception):
        stranger.get(team_id, ids[0])
    records = alice.audit(team_id, limit=1000).items
    actions = {r.action for r in records}
    assert {"team.create", "memory.add", "memory.search", "memory.get"} <= actions
    search = next(r for r in records if r.action == "memory.search")
    assert search.detail["query_sha256"] == hashlib.sha256(b"secret query text").hexdigest()
    assert all("secret query text" not in str(r.detail) for r in records)
    refused = [r for r in records if r.user_id == stranger_id]
    assert refused and refused[0].outcome == "denied"
    operator = client_for(http, OPERATOR_TOKEN)
    everything = operator.audit(limit=1000)
    assert any(r.action == "auth" and r.outcome == "denied" for r in everything.items)
    older = operator.audit(limit=2)
    assert len(older.items) == 2 and older.next_before == older.items[-1].id
    assert operator.audit(limit=2, before=older.next_before).items[0].id < older.items[-1].id


def test_export_and_erase_one_user(http, team) -> None:
    from apex_models.cloud.client import CloudError

    team_id, alice, _ = team
    user_id, eve = new_user(http, "eve")
    alice.set_member(team_id, user_id, "writer")
    mine = eve.add(team_id, "eve's note on the release checklist").id
    cursor = alice.pull(team_id, cursor=0, limit=1000).cursor
    export = eve.export_user(user_id)
    assert [m.id for m in export.memories] == [mine]
    assert export.user.name == "eve" and export.memberships[0].id == team_id
    assert any(r.action == "memory.add" for r in export.audit)
    with pytest.raises(CloudError) as other:
        eve.export_user(alice.me().user.id)
    assert other.value.status == 403
    erased = eve.erase_user(user_id)
    assert (erased.memories_erased, erased.memberships_deleted) == (1, 1)
    with pytest.raises(CloudError) as dead:
        eve.me()
    assert dead.value.status == 401
    assert [(c.id, c.deleted, c.text) for c in alice.pull(team_id, cursor=cursor).changes] == [(mine, True, None)]
    with psycopg.connect(http.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE id = %s", (user_id,)).fetchone()[0] == 0
        leftover = conn.execute("SELECT count(*) FROM memories WHERE text LIKE %s", ("%release checklist%",))
        assert leftover.fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM audit WHERE action = 'user.erase' AND target = %s",
                            (str(user_id),)).fetchone()[0] == 1


def test_erasing_the_only_owner_hands_the_team_on(http) -> None:
    carol_id, carol = new_user(http, "carol")
    dave_id, dave = new_user(http, "dave")
    erin_id, erin = new_user(http, "erin")
    shared, alone = carol.create_team("shared"), carol.create_team("alone")
    carol.set_member(shared.id, dave_id, "reader")
    carol.set_member(shared.id, erin_id, "admin")
    carol.erase_user(carol_id)
    assert {(m.user_id, m.role) for m in erin.members(shared.id)} == {(dave_id, "reader"), (erin_id, "owner")}
    assert dave.search(shared.id, "anything") == []   # dave keeps his access
    with psycopg.connect(http.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM teams WHERE id = %s", (alone.id,)).fetchone()[0] == 0


def test_bad_input_is_4xx(http, team) -> None:
    team_id, alice, _ = team
    headers = alice._headers
    bad = [
        ("POST", f"/v1/teams/{team_id}/memories", {"text": "nul \x00 inside"}),
        ("POST", f"/v1/teams/{team_id}/memories", {"text": "   "}),
        ("POST", f"/v1/teams/{team_id}/memories", {"text": "x", "tags": "not-a-list"}),
        ("POST", f"/v1/teams/{team_id}/memories", {"text": "x", "unknown": 1}),
        ("POST", f"/v1/teams/{team_id}/search", {"query": "x", "k": 0}),
        ("POST", f"/v1/teams/{team_id}/search", {"query": " \t "}),
        ("POST", f"/v1/teams/{team_id}/search", {"query": "x", "mode": "fuzzy"}),
        ("POST", f"/v1/teams/{team_id}/sync/push", {"changes": [{"id": str(uuid.uuid4()),
                                                               "updated_at": "2026-01-01T00:00:00Z"}]}),
        ("GET", f"/v1/teams/{team_id}/memories?limit=0", None),
        ("GET", f"/v1/teams/{team_id}/sync/pull?cursor=-1", None),
        ("GET", "/v1/teams/not-a-uuid/memories", None),
    ]
    for method, path, body in bad:
        response = http.request(method, path, json=body, headers=headers)
        assert 400 <= response.status_code < 500, (method, path, body, response.status_code, response.text)


def test_body_size_and_rate_limits(postgres_url, minilm_embedder) -> None:
    from apex_models.cloud.client import CloudError

    with fresh_database(postgres_url) as url, running_app(url, minilm_embedder, max_body_bytes=4096,
                                                          rate_limit_per_minute=60, rate_limit_burst=5) as http:
        _, alice = new_user(http, "alice")
        team = alice.create_team("t")
        big = http.post(f"/v1/teams/{team.id}/memories", json={"text": "x" * 10_000}, headers=alice._headers)
        assert big.status_code == 413
        statuses = []
        for _ in range(8):
            try:
                alice.teams()
                statuses.append(200)
            except CloudError as exc:
                statuses.append(exc.status)
                assert exc.retry_after and exc.retry_after >= 1
        assert 429 in statuses and statuses[0] == 200
        assert client_for(http, OPERATOR_TOKEN).teams() == []   # another token has its own budget


def test_the_bundle_ranker_reranks_server_search(postgres_url, minilm_embedder, heads_bundle) -> None:
    """With a ranker in the bundle, every search's head is re-scored by it (scores in `why`)."""
    from apex_models.cloud.app import load_reranker
    from apex_models.cloud.settings import Settings
    from apex_models.runtime.bundle import load_bundle

    bundle_dir = heads_bundle / "bundle"
    # fp32: dynamic int8 quantises activations per batch, so its scores move with the batch
    rerank = load_reranker(Settings(bundle=bundle_dir, precision="fp32"))
    assert load_reranker(Settings(bundle=bundle_dir, rerank=False)) is None
    ranker = load_bundle(bundle_dir).ranker(precision="fp32")
    with fresh_database(postgres_url) as url, running_app(url, minilm_embedder, reranker=rerank) as app:
        _, owner = new_user(app, "ranked")
        team = owner.create_team("ranked")
        for text, kind, tags, source in NOTES:
            owner.add(team.id, text, kind=kind, tags=tags, source=source)
        hits = owner.search(team.id, "how do I convert a duration string to seconds", k=5)
    # The bundle's ranker is a correction to the embedder (first_stage_scale 20): the server adds
    # 20 x each memory's cosine from the team's index, as the runtime does.
    assert rerank.first_stage_scale == 20.0 and all(h.why.dense_score is not None for h in hits)
    expected = ranker.score("how do I convert a duration string to seconds", [h.text for h in hits]) \
        + 20.0 * np.array([h.why.dense_score for h in hits])
    assert [h.why.rerank_score for h in hits] == pytest.approx([float(x) for x in expected], abs=1e-3)
    assert [h.why.rerank_score for h in hits] == sorted((h.why.rerank_score for h in hits), reverse=True)
