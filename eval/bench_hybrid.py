"""Hybrid search latency: local only, local + a live cloud server, local + a hanging server.

A real cloud service (uvicorn on a loopback port, a private throwaway PostgreSQL) holds a
team's memories; a device's HybridMemory holds its own and the team cache. Each query is
timed end to end (query embedding, local and cache search, the cloud call within the
budget, fusion). The hanging case is a socket that accepts and never answers, so it
shows what the budget buys. Writes eval/results/hybrid.json.

    python eval/bench_hybrid.py --bundle export/bundles/default --memories 2000 --queries 200
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from apex_models.evaluation.results import write_result  # noqa: E402

QUERIES = ["how do we retry http calls", "why is the postgres driver pinned", "where do release notes go",
           "what does the deploy checklist say", "which runner builds the docs", "how is the cache invalidated"]


def _texts(n: int, offset: int) -> list[str]:
    topics = ["retry policy", "postgres pool", "release checklist", "docs build", "cache invalidation",
              "feature flags", "deploy window", "on-call rota"]
    return [f"note {offset + i}: the {topics[i % len(topics)]} decision #{i} applies to service {i % 37}"
            for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _timings(memory, queries: list[str], budget_ms: float) -> dict:
    times, partial = [], 0
    for q in queries:
        start = time.perf_counter()
        result = memory.search(q, k=10, budget_ms=budget_ms)
        times.append((time.perf_counter() - start) * 1000)
        partial += result.partial
    arr = np.array(times)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 2), "p99_ms": round(float(np.percentile(arr, 99)), 2),
            "mean_ms": round(float(arr.mean()), 2), "partial": partial, "queries": len(queries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=ROOT / "export" / "bundles" / "default")
    parser.add_argument("--memories", type=int, default=2000, help="local memories and as many team memories")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--budget-ms", type=float, default=150.0)
    parser.add_argument("--out", type=Path, default=ROOT / "eval" / "results" / "hybrid.json")
    args = parser.parse_args()

    import uvicorn

    from apex_models.cloud.app import create_app
    from apex_models.cloud.client import CloudClient
    from apex_models.cloud.postgres import LocalPostgres
    from apex_models.cloud.schemas import ChangeIn
    from apex_models.cloud.settings import Settings
    from apex_models.hybrid import HybridMemory
    from apex_models.hybrid.cloud import TeamCloud
    from apex_models.runtime import load_bundle

    embedder = load_bundle(args.bundle).embedder()
    work = Path(tempfile.mkdtemp(prefix="apex-bench-hybrid-"))
    work.chmod(0o755)
    pg = LocalPostgres(work / "pg")
    token = "apex_" + "bench-operator-token-0123456789abcdef0123"
    queries = [QUERIES[i % len(QUERIES)] + f" {i % 11}" for i in range(args.queries)]
    try:
        url = pg.start()
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(
            create_app(Settings(database_url=url, bootstrap_token=token, rate_limit_per_minute=1e6,
                                rate_limit_burst=100_000), embedder=embedder),
            host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        with CloudClient(base, token) as operator:
            team = operator.create_team("bench")
            for start in range(0, args.memories, 250):
                now = datetime.now(timezone.utc)
                operator.push(team.id, [ChangeIn(id=uuid.uuid4(), updated_at=now, text=t)
                                        for t in _texts(min(250, args.memories - start), 10**6 + start)])
            key = bytes(range(32))
            cloud = TeamCloud(CloudClient(base, token, timeout=5.0), team.id)
            with HybridMemory.open(work / "device", embedder, cloud, key=key) as memory:
                for start in range(0, args.memories, 250):
                    memory.add_many([{"text": t} for t in _texts(min(250, args.memories - start), start)])
                memory.pull()
                memory.search("warm up", budget_ms=5000)
                local = HybridMemory(memory.store, memory.cache, memory.outbox, None, memory.classifier,
                                     memory.policy)
                results = {"local_only": _timings(local, queries, args.budget_ms),
                           "with_cloud": _timings(memory, queries, args.budget_ms)}
            hang = socket.socket()
            hang.bind(("127.0.0.1", 0))
            hang.listen(128)
            try:
                dead = TeamCloud(CloudClient(f"http://127.0.0.1:{hang.getsockname()[1]}", token), team.id)
                with HybridMemory.open(work / "device", embedder, dead, key=key) as memory:
                    memory.search("warm up", budget_ms=50)
                    results["cloud_hanging"] = _timings(memory, queries[:50], args.budget_ms)
            finally:
                hang.close()
        server.should_exit = True
        thread.join(timeout=30)
    finally:
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)
    report = {"memories_local": args.memories, "memories_team": args.memories, "budget_ms": args.budget_ms,
              "k": 10, **results}
    print(report)
    write_result(args.out, "hybrid search latency", report,
                 command=f"python eval/bench_hybrid.py --memories {args.memories} --queries {args.queries}")


if __name__ == "__main__":
    main()
