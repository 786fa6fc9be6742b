"""The hybrid runtime end to end: two devices of one user, a teammate, one real server.

The server is the real cloud service (uvicorn on a loopback port, PostgreSQL behind it);
every request body the devices send is captured from the HTTP client as it leaves, and
the server's database is read directly, so "no secret reached the server" is checked on
both sides of the wire.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import httpx
import psycopg
import pytest

from apex_models.cloud.client import CloudClient
from apex_models.hybrid import HybridMemory, RoutingPolicy
from apex_models.hybrid.cloud import TeamCloud
from cloud_fixtures import OPERATOR_TOKEN, fresh_database
from hybrid_plants import KINDS, plant

KEY = bytes(range(32))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The cloud app under uvicorn in a thread; `stop()` and `start()` make a real outage."""

    def __init__(self, database_url: str, embedder) -> None:
        self.database_url, self.embedder, self.port = database_url, embedder, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = None
        self._thread = None

    def start(self) -> None:
        import uvicorn

        from apex_models.cloud.app import create_app
        from apex_models.cloud.settings import Settings

        settings = Settings(database_url=self.database_url, bootstrap_token=OPERATOR_TOKEN,
                            rate_limit_per_minute=100_000, rate_limit_burst=10_000)
        config = uvicorn.Config(create_app(settings, embedder=self.embedder), host="127.0.0.1", port=self.port,
                                log_level="warning", lifespan="on")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 60
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the cloud server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


class Capture:
    """Every request body a device sends, as bytes, taken from httpx as the request leaves."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx.Request) -> None:
        self.bodies.append(request.read())


@pytest.fixture(scope="module")
def server(postgres_url: str, minilm_embedder) -> Iterator[LiveServer]:
    with fresh_database(postgres_url) as url:
        live = LiveServer(url, minilm_embedder)
        live.start()
        try:
            yield live
        finally:
            live.stop()


@pytest.fixture(scope="module")
def team(server: LiveServer):
    """A team owned by alice with bob as a writer; their tokens."""
    with CloudClient(server.url, OPERATOR_TOKEN) as operator:
        alice = operator.create_user("alice")
        bob = operator.create_user("bob")
    with CloudClient(server.url, alice.token.token) as client:
        created = client.create_team(f"backend-{uuid.uuid4().hex[:6]}")
        client.set_member(created.id, bob.user.id, "writer")
    return {"id": created.id, "alice": alice.token.token, "bob": bob.token.token}


@contextmanager
def device(path: Path, embedder, server: LiveServer, token: str, team_id, capture: Capture | None = None,
           **kwargs) -> Iterator[HybridMemory]:
    hooks = {"request": [capture]} if capture else {}
    http = httpx.Client(base_url=server.url, timeout=10.0, event_hooks=hooks)
    cloud = TeamCloud(CloudClient(token=token, http=http), team_id)
    try:
        with HybridMemory.open(path, embedder, cloud, key=KEY, **kwargs) as memory:
            yield memory
    finally:
        http.close()


def drain(memory: HybridMemory, rounds: int = 200) -> None:
    for _ in range(rounds):
        memory.outbox.retry_now()
        memory.push(limit=500)
        if memory.status()["pending"] == 0:
            return
    raise AssertionError(f"outbox did not drain: {memory.status()}")


def server_texts(server: LiveServer, team_id) -> list[str]:
    with psycopg.connect(server.database_url) as conn:
        return [r[0] or "" for r in conn.execute("SELECT text FROM memories WHERE team_id = %s", (team_id,))]


def test_two_devices_and_a_teammate_converge(tmp_path: Path, minilm_embedder, server, team) -> None:
    with device(tmp_path / "laptop", minilm_embedder, server, team["alice"], team["id"]) as laptop, \
            device(tmp_path / "desktop", minilm_embedder, server, team["alice"], team["id"]) as desktop, \
            device(tmp_path / "bob", minilm_embedder, server, team["bob"], team["id"]) as bob:
        decision = laptop.add("We pinned psycopg to 3.1 because 3.2 broke pooling on Alpine", kind="decision")
        secret = laptop.add("the deploy key is AKIAQ3EGRXC7MKD2LBNP", kind="note")
        assert laptop.sync().pushed == 1
        for other in (desktop, bob):
            other.pull()
            result = other.search("why is the postgres driver pinned?", k=3, budget_ms=10_000)
            assert result.cloud == "ok" and not result.partial
            hit = result.hits[0]
            assert hit.id == decision and "team" in hit.origins and "cloud" in hit.origins
            assert other.cache.get(secret) is None
        # a teammate's edit reaches both of alice's devices; the newer change wins
        bob_cloud = bob.cloud
        bob_cloud.push([{"id": decision, "op": "upsert", "text": "We pinned psycopg to 3.1.19 (pooling bug on Alpine)",
                         "kind": "decision", "tags": [], "source": None,
                         "updated_at": datetime.now(timezone.utc).isoformat()}])
        laptop.pull()
        desktop.pull()
        assert laptop.store.get(decision).text.startswith("We pinned psycopg to 3.1.19")
        assert desktop.cache.get(decision).text.startswith("We pinned psycopg to 3.1.19")
        # a delete on the laptop becomes a tombstone everywhere
        laptop.delete(decision)
        laptop.sync()
        desktop.pull()
        bob.pull()
        assert desktop.cache.get(decision) is None and bob.cache.get(decision) is None
        assert all("3.1.19" not in t for t in server_texts(server, team["id"]) if t)


def test_no_planted_secret_or_pii_reaches_the_server(tmp_path: Path, minilm_embedder, server, team) -> None:
    plants = plant(1100, seed=7)
    assert len({p.kind for p in plants}) >= 15 and len(KINDS) >= 15
    capture = Capture()
    with device(tmp_path / "laptop", minilm_embedder, server, team["alice"], team["id"], capture,
                policy=RoutingPolicy(secrets="redact")) as laptop:
        for start in range(0, len(plants), 100):
            laptop.add_many([{"text": p.text, "kind": "note", "source": p.source} for p in plants[start:start + 100]])
        drain(laptop)
        status = laptop.status()
    shared = status["routed"]["shared"]
    assert shared >= 500, status  # redacted copies do reach the team: the test must exercise them
    wire = b"\n".join(capture.bodies)
    stored = "\n".join(server_texts(server, team["id"]))
    assert stored.count("<SECRET:") >= 500 and stored.count("<PII:") >= 100   # redaction was exercised
    leaked = [p for p in plants if _pieces(p.value, wire, stored)]
    assert leaked == [], f"{len(leaked)} planted values reached the server, e.g. {leaked[:3]}"


def _pieces(value: str, wire: bytes, stored: str) -> bool:
    """Whether the value, or any line of a multi-line value (a PEM body), left the machine."""
    parts = [value] + [line for line in value.splitlines() if len(line) >= 16 and "-----" not in line]
    return any(p in stored or p.encode() in wire or p.replace("/", "\\/").encode() in wire for p in parts)


@pytest.mark.slow
def test_outage_during_5000_writes_loses_and_duplicates_nothing(tmp_path: Path, minilm_embedder, server,
                                                                team) -> None:
    texts = [f"build note {i}: step {i % 17} of the release checklist passed on runner {i % 5}" for i in range(5000)]
    with device(tmp_path / "laptop", minilm_embedder, server, team["alice"], team["id"]) as laptop:
        laptop.outbox.base_backoff_s = 0.05
        laptop.start_sync(interval_s=0.2)
        ids: list[str] = []
        for start in range(0, len(texts), 250):
            if start == 1000:
                server.stop()            # the cloud goes away mid-stream
            if start == 4000:
                server.start()           # and comes back
            ids += laptop.add_many([{"text": t} for t in texts[start:start + 250]])
        laptop.stop_sync()
        drain(laptop)
        assert len(laptop.store.memories()) == 5000
    with psycopg.connect(server.database_url) as conn:
        rows = conn.execute("SELECT id FROM memories WHERE team_id = %s AND text LIKE 'build note %%'",
                            (team["id"],)).fetchall()
    cloud_ids = [r[0].hex for r in rows]
    assert len(cloud_ids) == 5000 and set(cloud_ids) == set(ids)


def test_search_budget_holds_when_the_server_hangs(tmp_path: Path, minilm_embedder) -> None:
    """A server that accepts connections and never answers: local results within the budget."""
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(64)
    url = f"http://127.0.0.1:{hang.getsockname()[1]}"
    try:
        with CloudClient(url, "apex_token") as client, \
                HybridMemory.open(tmp_path / "m", minilm_embedder, TeamCloud(client, uuid.uuid4()), key=KEY) as memory:
            memory.add("The staging cluster autoscaler is capped at 12 nodes", kind="decision")
            memory.search("warm up", k=1)   # first search loads the indexes
            times = []
            for _ in range(5):
                result = memory.search("how many nodes can staging scale to", k=3, budget_ms=200)
                times.append(result.elapsed_ms)
                assert result.partial and result.cloud == "timeout"
                assert result.hits[0].text.startswith("The staging cluster autoscaler")
            assert max(times) < 200 + 150, times   # the budget plus local work, never the hang
            with pytest.raises(ValueError, match="query is empty"):
                memory.search("  ", k=3)
    finally:
        hang.close()
