"""MemoryStore: semantic recall, kind filter, delete, persistence, embedder identity, the memory model."""

from __future__ import annotations

from pathlib import Path

import pytest

from apex_models.runtime import MemoryStore, OnnxEmbedder, load_bundle
from apex_models.runtime.store import StoreError

KEY = bytes(range(32))  # a raw key keeps these tests free of scrypt's cost

PLANTED = "The staging database password rotates every Monday; fetch it from the vault at deploy time."
PARAPHRASE = "when does the staging db credential change and where do I get it"

DISTRACTORS = [
    "Use ruff for linting and black-compatible formatting in every repository.",
    "The frontend build uses Vite; run npm run dev for hot reload.",
    "Retry HTTP calls three times with exponential backoff before failing.",
    "Our CI runs pytest with -x on pull requests and the full suite nightly.",
    "Log timestamps are UTC in ISO 8601 format.",
    "Feature flags live in LaunchDarkly; never hardcode them.",
    "The payments service talks to Stripe through a thin adapter module.",
    "Docker images are built from python:3.11-slim.",
    "Kafka topics are named <team>.<domain>.<event>.",
    "Prefer dataclasses over dicts for internal records.",
    "The mobile app release train leaves every second Thursday.",
    "Use pathlib instead of os.path in new code.",
    "Coverage must not drop below 85 percent on main.",
    "Terraform state is stored in a remote S3 backend with locking.",
    "Grafana dashboards are provisioned from JSON in the ops repo.",
    "The search service caches results in Redis for five minutes.",
    "Use structlog for structured logging in services.",
    "Time zones: store UTC, convert only at the edges.",
    "SQL migrations are managed with Alembic.",
    "Pin dependencies with a lock file; update them weekly.",
    "The onboarding doc explains how to get VPN access.",
    "API errors follow RFC 7807 problem details.",
    "Background jobs run on Celery with a Redis broker.",
    "GraphQL schema changes need a review from the API guild.",
    "def slugify(s):\n    return re.sub(r'[^a-z0-9]+', '-', s.lower()).strip('-')",
    "Use the async SQLAlchemy engine in the new services.",
    "Benchmarks run on a dedicated machine to avoid noisy neighbours.",
    "Secrets must never be committed; pre-commit runs gitleaks.",
    "The design system's colours are defined as CSS variables.",
    "Rate limits: 100 requests per minute per API key.",
]


@pytest.fixture(scope="module")
def embedder(minilm_bundle: Path) -> OnnxEmbedder:
    return load_bundle(minilm_bundle).embedder()


@pytest.fixture()
def store(tmp_path: Path, embedder: OnnxEmbedder):
    with MemoryStore.open(tmp_path / "store", embedder, key=KEY) as s:
        yield s


def _fill(store: MemoryStore) -> str:
    store.add_many([{"text": t, "kind": "snippet" if t.startswith("def ") else "convention",
                     "tags": ["team"]} for t in DISTRACTORS])
    return store.add(PLANTED, kind="secret-policy", tags=["ops", "db"], source="wiki/staging")


def test_planted_memory_ranks_first(store: MemoryStore) -> None:
    planted = _fill(store)
    assert len(store) == 31
    hits = store.search(PARAPHRASE, k=5)
    assert hits[0].id == planted and hits[0].text == PLANTED
    assert hits[0].tags == ["ops", "db"] and hits[0].source == "wiki/staging"
    assert hits[0].score > hits[1].score
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_get_and_roundtrip(store: MemoryStore) -> None:
    planted = _fill(store)
    memory = store.get(planted)
    assert memory is not None and memory.kind == "secret-policy" and memory.created_at
    assert store.get("0" * 32) is None


def test_kind_filter_beyond_k(store: MemoryStore) -> None:
    _fill(store)
    # The only snippet ranks low for this query; the filter must still find it with k=1.
    hits = store.search(PARAPHRASE, k=1, kind="snippet")
    assert len(hits) == 1 and hits[0].kind == "snippet"
    assert all(h.kind == "convention" for h in store.search("logging", k=50, kind="convention"))
    assert len(store.search("logging", k=50, kind="convention")) == 29
    assert store.search("anything", k=3, kind="no-such-kind") == []


def test_delete_removes_from_search(store: MemoryStore) -> None:
    planted = _fill(store)
    assert store.delete(planted) is True
    assert store.delete(planted) is False
    assert store.get(planted) is None
    assert all(h.id != planted for h in store.search(PARAPHRASE, k=50))
    assert len(store) == 30


def test_persistence_after_reopen(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    with MemoryStore.open(tmp_path / "s", embedder, key=KEY) as store:
        planted = _fill(store)
        store.delete(store.search("Vite frontend build", k=1)[0].id)
    with MemoryStore.open(tmp_path / "s", embedder, key=KEY) as store:
        assert len(store) == 30
        assert store.search(PARAPHRASE, k=1)[0].id == planted
        assert store.search("Vite frontend build", k=30)[0].text != DISTRACTORS[1]


def test_empty_store_and_bad_input(store: MemoryStore) -> None:
    assert store.search("anything") == []
    with pytest.raises(ValueError):
        store.add("   ")
    with pytest.raises(ValueError, match="query is empty"):
        store.search(" \n ")


def test_bad_fields_are_refused_on_add_and_update_alike(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    """What add refuses, update refuses too, before anything is written: a non-string kind
    or source once broke stats(), snapshots and source filters for good (an API audit)."""
    from apex_models.runtime.store import StoreError

    with MemoryStore.open(tmp_path / "s", embedder, key=KEY) as store:
        a = store.add("first memory", tags=["db"], source=Path("src/b.py"))
        assert store.get(a).source == "src/b.py" and store.get(a).tags == ["db"]
        for bad, match in (({"kind": 3}, "'kind' must be"), ({"kind": " "}, "'kind' must be"),
                           ({"tags": "db"}, "not one string"), ({"tags": [1, 2]}, "'tags' must be"),
                           ({"source": 123}, "'source' must be"), ({"text": "bad \ud800 surrogate"}, "Unicode")):
            with pytest.raises(ValueError, match=match):
                store.update(a, **bad)
            with pytest.raises(ValueError, match=match):
                store.add(**{"text": "second memory", **bad})
        with pytest.raises(ValueError, match="is a dict"):
            store.add_many(["just a string"])
        assert store.add("no tags", tags=None) and store.add("tuple tags", tags=("x", "y"))
        with pytest.raises(ValueError, match="id is a string"):
            store.delete(None)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="k must be an integer"):
            store.search("memory", k="3")  # type: ignore[arg-type]
        assert store.get(a).kind == "note" and store.get(a).tags == ["db"] and len(store) == 3
        assert store.stats()["kinds"] == {"note": 3} and store.save_snapshot() > 0
        assert [h.id for h in store.search("memory", source_prefix="src/")] == [a]
    with pytest.raises(StoreError, match="is closed"):
        store.search("memory")
    with pytest.raises(StoreError, match="is closed"):
        store.add("after close")


def test_open_takes_the_bundle_itself_and_refuses_what_cannot_embed(tmp_path: Path, minilm_bundle: Path,
                                                                     embedder: OnnxEmbedder) -> None:
    """The issue's API: open a store with a bundle and a key. The bundle stands for its default
    embedder (the same identity, so either reopens the store); anything else without the
    embedder's members is a TypeError that names them, raised before a file is written."""
    bundle = load_bundle(minilm_bundle)
    with MemoryStore.open(tmp_path / "s", bundle, key=KEY) as store:
        planted, count = _fill(store), len(store)
    with MemoryStore.open(tmp_path / "s", embedder, key=KEY) as store:
        assert store.search(PARAPHRASE, k=1)[0].id == planted

    class Delegating:   # a wrapper (counting, caching) that forwards what it does not define
        def __init__(self, inner) -> None:
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

    with MemoryStore.open(tmp_path / "s", Delegating(embedder), key=KEY) as store:
        assert len(store) == count
    with pytest.raises(TypeError, match="encode_queries, encode_documents"):
        MemoryStore.open(tmp_path / "wrong", str(minilm_bundle), key=KEY)
    assert not (tmp_path / "wrong").exists()


def test_other_embedder_is_refused(tmp_path: Path, minilm_bundle: Path, embedder: OnnxEmbedder) -> None:
    with MemoryStore.open(tmp_path / "s", embedder, key=KEY) as store:
        store.add("something to remember")
    other = load_bundle(minilm_bundle).embedder(precision="fp32")
    with pytest.raises(StoreError, match="different embedder.*precision"):
        MemoryStore.open(tmp_path / "s", other, key=KEY)


def test_memory_model_fields_and_update(store: MemoryStore) -> None:
    memory_id = store.add("The retry decorator lives in utils/retry.py", kind="code", tags=["http"],
                          source="src/utils/retry.py")
    memory = store.get(memory_id)
    assert memory is not None and memory.kind == "code" and memory.source == "src/utils/retry.py"
    assert memory.created_at == memory.updated_at and memory.relations == []
    updated = store.update(memory_id, text="The retry decorator moved to net/retry.py", tags=["http", "moved"])
    assert updated is not None and updated.text.endswith("net/retry.py") and updated.tags == ["http", "moved"]
    assert updated.created_at == memory.created_at and updated.updated_at > memory.updated_at
    assert updated.kind == "code" and updated.source == "src/utils/retry.py"
    # re-embedded: the new text is what the dense index finds now
    assert store.search("where is the retry decorator now, net module", k=1, mode="dense")[0].id == memory_id
    assert store.update("0" * 32, text="nothing") is None


def test_links_and_related_walk(store: MemoryStore) -> None:
    error = store.add("ImportError: libpq.so.5 not found on Alpine", kind="error")
    decision = store.add("Pin psycopg to 3.1 until pooling works on Alpine", kind="decision",
                         relations=[("fixes", error)])
    note = store.add("Revisit the psycopg pin after 3.2.4", kind="note")
    store.link(note, decision, "follows-up")
    memory = store.get(decision)
    assert memory is not None
    assert {(r.relation, r.other_id, r.direction) for r in memory.relations} == {
        ("fixes", error, "out"), ("follows-up", note, "in")}
    one_hop = store.related(note, depth=1)
    assert [(r.memory.id, r.relation, r.depth) for r in one_hop] == [(decision, "follows-up", 1)]
    two_hops = store.related(note, depth=2)
    assert [(r.memory.id, r.depth, r.via) for r in two_hops] == [(decision, 1, note), (error, 2, decision)]
    with pytest.raises(StoreError, match="no memory"):
        store.link(note, "f" * 32)
    assert store.delete(error) is True
    assert store.related(note, depth=3) == store.related(note, depth=1)  # the edge went with it
    assert store.unlink(note, decision) is True and store.related(note) == []


def test_add_requires_a_key(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    with pytest.raises(StoreError, match="exactly one of passphrase, key or keyring_service"):
        MemoryStore.open(tmp_path / "s", embedder)
    with pytest.raises(StoreError, match="no memory store"):
        MemoryStore.open(tmp_path / "missing", embedder, key=KEY, create=False)
    # A bad key is refused before the folder is made, so nothing is left to look like a store...
    for bad in ({"passphrase": ""}, {"key": b"short"}):
        with pytest.raises(ValueError, match="passphrase is empty|exactly 32 bytes"):
            MemoryStore.open(tmp_path / "bad", embedder, **bad)
    assert not (tmp_path / "bad").exists()
    # ...and a database an interrupted create left is not a store to open without `create`.
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "memories.db").write_bytes(b"")
    with pytest.raises(StoreError, match="never initialised"):
        MemoryStore.open(tmp_path / "half", embedder, key=KEY, create=False)


def test_old_unencrypted_store_is_refused(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    import sqlite3

    folder = tmp_path / "old"
    folder.mkdir()
    db = sqlite3.connect(folder / "memories.db")
    with db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        db.execute("INSERT INTO meta VALUES ('store_schema_version', '1')")
    db.close()
    with pytest.raises(StoreError, match="schema version 1 .*unencrypted"):
        MemoryStore.open(folder, embedder, key=KEY)


def test_threads_share_one_store(store: MemoryStore) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def work(t: int) -> list[str]:
        ids = []
        for i in range(10):
            ids.append(store.add(f"thread {t} note {i} about the build cache"))
            assert store.search(f"thread {t} note", k=3)
        return ids

    with ThreadPoolExecutor(4) as pool:
        ids = [i for batch in pool.map(work, range(4)) for i in batch]
    assert len(set(ids)) == 40 and len(store) == 40 and store.stats()["indexed"] == 40
