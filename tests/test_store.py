"""MemoryStore: semantic recall, kind filter, delete, persistence, embedder identity."""

from __future__ import annotations

from pathlib import Path

import pytest

from apex_models.runtime import MemoryStore, OnnxEmbedder, load_bundle
from apex_models.runtime.store import StoreError

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
    with MemoryStore.open(tmp_path / "store", embedder) as s:
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
    with MemoryStore.open(tmp_path / "s", embedder) as store:
        planted = _fill(store)
        store.delete(store.search("Vite frontend build", k=1)[0].id)
    with MemoryStore.open(tmp_path / "s", embedder) as store:
        assert len(store) == 30
        assert store.search(PARAPHRASE, k=1)[0].id == planted
        assert store.search("Vite frontend build", k=30)[0].text != DISTRACTORS[1]


def test_empty_store_and_bad_input(store: MemoryStore) -> None:
    assert store.search("anything") == []
    with pytest.raises(ValueError):
        store.add("   ")


def test_other_embedder_is_refused(tmp_path: Path, minilm_bundle: Path, embedder: OnnxEmbedder) -> None:
    with MemoryStore.open(tmp_path / "s", embedder) as store:
        store.add("something to remember")
    other = load_bundle(minilm_bundle).embedder(precision="fp32")
    with pytest.raises(StoreError, match="different embedder.*precision"):
        MemoryStore.open(tmp_path / "s", other)
