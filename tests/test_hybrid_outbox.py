"""The hybrid runtime's local half: routing on write, the durable outbox, crash reconciliation."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from apex_models.hybrid.memory import HybridMemory
from apex_models.hybrid.outbox import SYNC_DB
from apex_models.hybrid.policy import RoutingPolicy
from apex_models.runtime import load_bundle

KEY = bytes(range(32))
AWS = "AKIAQ3EGRXC7MKD2LBNP"
CANARY = "zebra-canary-4417"


@pytest.fixture(scope="module")
def embedder(minilm_bundle: Path):
    return load_bundle(minilm_bundle).embedder()


@pytest.fixture()
def hybrid(tmp_path: Path, embedder):
    with HybridMemory.open(tmp_path / "mem", embedder, None, key=KEY) as memory:
        yield memory


def test_routes_are_recorded_and_only_shared_writes_are_queued(hybrid):
    shared = hybrid.add(f"we chose uv over pip-tools for locking ({CANARY})", kind="decision")
    secret = hybrid.add(f"prod deploy uses aws key {AWS}", kind="note")
    dotenv = hybrid.add("DEBUG=1", source=".env")
    assert hybrid.decision(shared).destination == "shared"
    assert hybrid.decision(secret).destination == "local"
    assert "aws_access_key" in hybrid.decision(secret).reason
    assert "path rule" in hybrid.decision(dotenv).reason
    due = hybrid.outbox.due()
    assert [(d.memory_id, d.op) for d in due] == [(shared, "upsert")]
    assert due[0].payload["text"].endswith(f"({CANARY})")
    status = hybrid.status()
    assert status["pending"] == 1 and status["routed"] == {"local": 2, "shared": 1}
    assert status["cloud"] == "offline"


def test_nothing_readable_in_the_sync_database(hybrid):
    hybrid.add(f"shared note {CANARY}")
    hybrid.add(f"secret note {CANARY} {AWS}")
    for path in hybrid.store.path.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert CANARY.encode() not in data and AWS.encode() not in data, path


def test_newest_operation_supersedes_and_a_new_secret_withdraws_the_share(hybrid):
    memory_id = hybrid.add("retry budget is 3 attempts")
    hybrid.update(memory_id, text="retry budget is 5 attempts")
    due = hybrid.outbox.due()
    assert len(due) == 1 and due[0].payload["text"] == "retry budget is 5 attempts"
    route = hybrid.update(memory_id, text=f"retry budget is 5 attempts; key {AWS}")
    assert route.destination == "local"
    [due] = hybrid.outbox.due()
    assert (due.memory_id, due.op, list(due.payload)) == (memory_id, "delete", ["updated_at"])


def test_delete_of_a_local_only_memory_tells_the_cloud_nothing(hybrid):
    local = hybrid.add(f"key {AWS}")
    assert hybrid.delete(local)
    assert hybrid.outbox.due() == []
    shared = hybrid.add("the wiki moved to docs.corp")
    hybrid.delete(shared)
    assert [(d.memory_id, d.op) for d in hybrid.outbox.due()] == [(shared, "delete")]


def test_backoff_grows_and_survives_reopen(tmp_path: Path, embedder):
    with HybridMemory.open(tmp_path / "m", embedder, None, key=KEY) as memory:
        memory.add("a shared fact")
        seq = memory.outbox.due()[0].seq
        now = time.time()
        memory.outbox.retry_later([seq], "ConnectError: refused", now=now)
        base = memory.outbox.base_backoff_s
        assert memory.outbox.due(now=now) == []
        assert len(memory.outbox.due(now=now + base)) == 1  # 1st wait: [0.5, 1) x base
        memory.outbox.retry_later([seq], "ConnectError: refused", now=now)
        # 2nd wait: [1, 2) x base. Checking at base + 0.01 failed about once in a hundred runs
        # (a draw within 1% of the bottom of the jitter), so the check sits just under base.
        assert memory.outbox.due(now=now + base * 0.999) == []
    with HybridMemory.open(tmp_path / "m", embedder, None, key=KEY) as memory:
        status = memory.status()
        assert status["pending"] == 1
        assert status["last_errors"][0]["attempts"] == 2
        assert "refused" in status["last_errors"][0]["error"]
        assert memory.outbox.retry_now() == 1 and len(memory.outbox.due()) == 1


def test_reconcile_repairs_a_crash_between_store_and_outbox(tmp_path: Path, embedder):
    path = tmp_path / "m"
    with HybridMemory.open(path, embedder, None, key=KEY) as memory:
        kept = memory.add("shared before the crash")
        memory.outbox.ack([d.seq for d in memory.outbox.due()])
        # a crash after the store committed but before the outbox did:
        orphan = memory.store.add("written, then the process died")
        # and a crash after a local delete, before its tombstone was queued:
        memory.store.delete(kept)
    with HybridMemory.open(path, embedder, None, key=KEY) as memory:
        ops = {(d.memory_id, d.op) for d in memory.outbox.due()}
        assert ops == {(orphan, "upsert"), (kept, "delete")}
        assert memory.decision(orphan).destination == "shared"
        assert memory.reconcile() == {"rerouted": 0, "tombstoned": 0}


def test_search_offline_is_local_and_complete(hybrid):
    hybrid.add("Postgres connection pool size is 20 per service", kind="decision")
    hybrid.add("The frontend uses Vite", kind="note")
    result = hybrid.search("how big is the db connection pool", k=1)
    assert result.cloud == "offline" and not result.partial
    assert result.hits[0].text.startswith("Postgres connection pool") and result.hits[0].origins == ["local"]


def test_policy_redact_queues_a_redacted_copy(tmp_path: Path, embedder):
    with HybridMemory.open(tmp_path / "m", embedder, None, key=KEY,
                           policy=RoutingPolicy(secrets="redact")) as memory:
        memory_id = memory.add(f"CI uses key {AWS} for the artifacts bucket")
        payload = memory.outbox.due()[0].payload
        assert payload["text"] == "CI uses key <SECRET:aws_access_key> for the artifacts bucket"
        assert payload["redacted"] is True
        assert memory.store.get(memory_id).text.endswith("artifacts bucket") and AWS in memory.store.get(memory_id).text


def test_sync_status_command_needs_no_key(tmp_path: Path, embedder):
    import json

    from typer.testing import CliRunner

    from apex_models.cli import app

    with HybridMemory.open(tmp_path / "m", embedder, None, key=KEY) as memory:
        memory.add("a shared fact")
        memory.add(f"a secret {AWS}")
        memory.outbox.retry_later([memory.outbox.due()[0].seq], "ConnectError: connection refused")
    result = CliRunner().invoke(app, ["sync", "status", "--store", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["pending"] == 1 and status["pending_by_op"] == {"upsert": 1}
    assert status["routed"] == {"local": 1, "shared": 1}
    assert status["last_errors"][0]["error"] == "ConnectError: connection refused"
    assert AWS not in result.stdout
    missing = CliRunner().invoke(app, ["sync", "status", "--store", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no hybrid sync state" in missing.output


class SilentResidualRanker:
    """A ranker trained as a correction to the embedder that has learned nothing: logits 0."""

    first_stage_scale = 20.0

    def score(self, query: str, texts: list[str]):
        import numpy as np

        return np.zeros(len(texts))


class CountingEmbedder:
    """The bundle's embedder, noting every document text it is asked to embed."""

    def __init__(self, inner):
        self.inner, self.documents = inner, []

    def encode_documents(self, texts):
        self.documents.extend(texts)
        return self.inner.encode_documents(texts)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class TextOnlyCloud:
    """A cloud that answers searches with fixed rows (text, no vector) and syncs nothing."""

    def __init__(self, rows):
        self.rows = rows

    def push(self, changes):
        return []

    def pull(self, cursor, limit):
        return [], cursor

    def search(self, query, k, timeout_s):
        return self.rows


def test_search_with_a_residual_ranker_adds_the_cosines(tmp_path: Path, embedder):
    """A ranker with `first_stage_scale` adds each head hit's cosine to the query: local hits
    bring their stored vectors, and only the cloud's hit, which comes as text, is embedded at
    search time. A silent correction then ranks by cosine alone."""
    texts = ["we deploy with blue-green releases", "the cache holds sessions for an hour",
             "blue-green deploys switch traffic at the load balancer", "lunch is at noon"]
    cloud_text = "the team rolls back a blue-green deploy by flipping the router"
    query = "how do blue-green deploys work"
    counting = CountingEmbedder(embedder)
    cloud = TextOnlyCloud([{"id": "cloud-1", "score": 1.0, "text": cloud_text, "kind": "note"}])
    with HybridMemory.open(tmp_path / "mem", counting, cloud, key=KEY, reranker=SilentResidualRanker()) as memory:
        for text in texts:
            memory.add(text, kind="note")
        counting.documents.clear()
        result = memory.search(query, k=5)
    hits = result.hits
    assert result.cloud == "ok" and counting.documents == [cloud_text]
    # each text embedded on its own, as add() and the search did (int8 activations scale per batch)
    vectors = np.concatenate([embedder.encode_documents([h.text]) for h in hits])
    cosines = vectors @ embedder.encode_queries([query])[0]
    assert [h.score for h in hits] == pytest.approx([20.0 * c for c in cosines], abs=1e-3)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert "blue-green" in hits[0].text and hits[-1].text == "lunch is at noon"
