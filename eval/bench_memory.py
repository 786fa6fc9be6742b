"""Benchmark (not a test): the encrypted memory store at 10k / 100k / 1M memories.

Measures, per size, with real embeddings from the bundle's embedder (int8 by default):
end-to-end search latency p50/p99 (query embedding + dense + keyword + fusion, also
with a kind filter and with HNSW forced), add throughput (batched, with and without
embedding), open time (decrypt every row, rebuild FAISS), the lazy BM25 rebuild,
recall@10 of HNSW against exact search, and peak RSS.

The note texts are generated (varied developer notes: decisions, errors, code, how-tos)
and embedded once; the vectors are cached in `.cache/bench-memory/` (git-ignored).

    python eval/bench_memory.py --bundle export/bundles/default --sizes 10000
    python eval/bench_memory.py --bundle B --sizes 10000,100000   # on a quiet machine

Writes eval/results/memory.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

# Single-threaded BLAS for numpy's small products: on a busy machine its thread pool
# spins and turns sub-millisecond work into tens of milliseconds.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

SERVICES = ["billing", "auth", "search", "ingest", "payments", "notifications", "gateway", "scheduler",
            "reporting", "inventory", "checkout", "profile", "analytics", "export", "webhooks", "mailer"]
THINGS = ["connection pool", "retry policy", "cache key", "feature flag", "migration", "rate limiter",
          "worker queue", "TLS certificate", "index", "batch size", "timeout", "log level", "dependency pin",
          "docker image", "cron schedule", "schema", "secret rotation", "health check", "circuit breaker"]
TOOLS = ["PostgreSQL", "Redis", "Kafka", "Celery", "SQLAlchemy", "FastAPI", "pytest", "ruff", "Terraform",
         "Kubernetes", "nginx", "gunicorn", "Alembic", "pydantic", "httpx", "boto3", "numpy", "Sentry"]
ERRORS = ["TimeoutError", "KeyError", "ConnectionResetError", "IntegrityError", "ValidationError",
          "PermissionError", "MemoryError", "UnicodeDecodeError", "RecursionError", "SSLError"]
VERBS = ["bumped", "pinned", "rolled back", "split", "renamed", "moved", "cached", "sharded", "disabled",
         "enabled", "rewrote", "profiled", "deprecated", "vendored"]
REASONS = ["it deadlocked under load", "p99 latency doubled", "the staging deploy failed",
           "a customer hit data loss", "memory grew without bound", "tests were flaky on CI",
           "the vendor changed their API", "cold starts took 40 seconds", "logs leaked tokens",
           "the nightly job overran its window"]

TEMPLATES = [
    ("decision", "We {verb} the {thing} of the {service} service because {reason}; revisit after the {tool} upgrade."),
    ("error", "{error} in {service}.{module}: {thing} misconfigured when {tool} restarts; fix by resetting the {thing}."),
    ("code", "def {fn}_{service}(client):\n    \"\"\"Refresh the {thing} for {service} via {tool}.\"\"\"\n"
             "    return client.{fn}(timeout={n})"),
    ("note", "How to debug the {service} {thing}: run `make {fn}-{service}`, check {tool} metrics, then grep for {error}."),
    ("note", "{tool} {n}.{m} is the version we run in {service}; the {thing} depends on it."),
    ("decision", "For {service}, prefer {tool} over hand-written code for the {thing} ({reason} last time)."),
]
QUERY_TEMPLATES = [
    "why did we change the {thing} in {service}", "how do I fix {error} in the {service} service",
    "{tool} version used by {service}", "function that refreshes the {service} {thing}",
    "what broke when {reason}", "debug {service} {thing} steps",
]


def _fill(template: str, rng: random.Random) -> str:
    return template.format(verb=rng.choice(VERBS), thing=rng.choice(THINGS), service=rng.choice(SERVICES),
                           reason=rng.choice(REASONS), tool=rng.choice(TOOLS), error=rng.choice(ERRORS),
                           module=rng.choice(["client", "worker", "api", "models", "tasks"]),
                           fn=rng.choice(["refresh", "rotate", "sync", "flush", "reload", "warm"]),
                           n=rng.randint(1, 60), m=rng.randint(0, 20))


def make_notes(n: int, seed: int = 0) -> list[dict]:
    """n varied, unique developer notes with kinds, tags and source paths."""
    rng = random.Random(seed)
    notes = []
    for i in range(n):
        kind, template = TEMPLATES[rng.randrange(len(TEMPLATES))]
        service = rng.choice(SERVICES)
        text = f"{_fill(template, rng)} (#{i})"
        notes.append({"text": text, "kind": kind, "tags": [service, rng.choice(["backend", "infra", "data"])],
                      "source": f"services/{service}/{rng.choice(['README.md', 'main.py', 'ops.md'])}"})
    return notes


def make_queries(n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    return [_fill(rng.choice(QUERY_TEMPLATES), rng) for _ in range(n)]


def cached_vectors(embedder, texts: list[str], cache: Path) -> np.ndarray:
    """Embed once per (texts, embedder); later runs load the .npy."""
    digest = hashlib.sha256(("\n".join(texts) + embedder.onnx_sha256).encode()).hexdigest()[:16]
    path = cache / f"vectors-{len(texts)}-{digest}.npy"
    if path.is_file():
        return np.load(path)
    start = time.perf_counter()
    vectors = embedder.encode_documents(texts, batch_size=64)
    print(f"embedded {len(texts)} notes in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 3), "p99_ms": round(float(np.percentile(arr, 99)), 3),
            "mean_ms": round(statistics.fmean(arr), 3)}


def time_searches(store, queries: list[str], **kwargs) -> dict[str, float]:
    for q in queries[:10]:
        store.search(q, k=10, **kwargs)
    samples = []
    for q in queries:
        start = time.perf_counter()
        store.search(q, k=10, **kwargs)
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)


def hnsw_recall(vectors: np.ndarray, query_vectors: np.ndarray, m: int, ef_construction: int,
                ef_search: int) -> dict[str, float]:
    """recall@10 of the store's HNSW settings against exact search, on the same real vectors."""
    from apex_models.runtime.dense import DenseIndex

    rows = list(range(len(vectors)))
    flat = DenseIndex(vectors.shape[1], "flat")
    flat.add(rows, vectors)
    start = time.perf_counter()
    hnsw = DenseIndex(vectors.shape[1], "hnsw", m, ef_construction, ef_search)
    hnsw.add(rows, vectors)
    build_s = time.perf_counter() - start
    recalls, exact_ms, approx_ms = [], [], []
    for q in query_vectors:
        t0 = time.perf_counter()
        truth = {r for r, _ in flat.search(q, 10)}
        t1 = time.perf_counter()
        found = {r for r, _ in hnsw.search(q, 10)}
        t2 = time.perf_counter()
        recalls.append(len(truth & found) / 10)
        exact_ms.append((t1 - t0) * 1000)
        approx_ms.append((t2 - t1) * 1000)
    return {"recall_at_10": round(statistics.fmean(recalls), 4), "hnsw_build_s": round(build_s, 2),
            "exact_p50_ms": percentiles(exact_ms)["p50_ms"], "hnsw_p50_ms": percentiles(approx_ms)["p50_ms"],
            "m": m, "ef_construction": ef_construction, "ef_search": ef_search}


def bench_size(n: int, embedder, queries: list[str], work: Path, cache: Path, embed_adds: int) -> dict:
    from apex_models.runtime import MemoryStore, StoreConfig

    notes = make_notes(n)
    vectors = cached_vectors(embedder, [x["text"] for x in notes], cache)
    folder = work / f"store-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    passphrase = "benchmark passphrase"
    out: dict = {"memories": n}

    with MemoryStore.open(folder, embedder, passphrase=passphrase) as store:
        start = time.perf_counter()  # batched adds that embed their own texts
        for i in range(0, embed_adds, 100):
            store.add_many(notes[i:i + 100])
        out["add_with_embedding_per_s"] = round(embed_adds / (time.perf_counter() - start), 1)
        start = time.perf_counter()  # the rest with cached vectors: seal + SQLite + FAISS
        for i in range(embed_adds, n, 1000):
            store.add_many(notes[i:i + 1000], vectors=vectors[i:i + 1000])
        out["add_precomputed_per_s"] = round((n - embed_adds) / (time.perf_counter() - start), 1)

    start = time.perf_counter()
    store = MemoryStore.open(folder, embedder, passphrase=passphrase)
    out["open_s"] = round(time.perf_counter() - start, 3)
    out["open_load_s"] = round(store.open_seconds, 3)  # decrypt + FAISS, without scrypt
    with store:
        start = time.perf_counter()
        store.search(queries[0], k=10)  # builds the BM25 index (lazy)
        out["first_search_ms"] = round((time.perf_counter() - start) * 1000, 1)
        out["keyword_rebuild_s"] = round(store._keyword.last_rebuild_s, 3)
        out["dense_index"] = store.stats()["dense_index"]
        out["search_hybrid"] = time_searches(store, queries)
        out["search_dense_only"] = time_searches(store, queries, mode="dense")
        out["search_keyword_only"] = time_searches(store, queries, mode="keyword")
        out["search_hybrid_kind_filter"] = time_searches(store, queries, kind="error")
        start = time.perf_counter()  # one write, then the search that pays the lazy rebuild
        store.add("A fresh note about the billing connection pool")
        store.search(queries[1], k=10)
        out["add_then_search_ms"] = round((time.perf_counter() - start) * 1000, 1)
    with MemoryStore.open(folder, embedder, passphrase=passphrase, config=StoreConfig(dense_index="hnsw")) as store:
        out["open_hnsw_s"] = round(store.open_seconds, 3)
        out["search_hybrid_hnsw"] = time_searches(store, queries)
    out["disk_bytes"] = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    shutil.rmtree(folder, ignore_errors=True)

    cfg = StoreConfig()
    query_vectors = embedder.encode_queries(queries[:200])
    out["hnsw_vs_exact"] = hnsw_recall(vectors, query_vectors, cfg.hnsw_m, cfg.hnsw_ef_construction,
                                       cfg.hnsw_ef_search)
    out["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("export/bundles/default"))
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--sizes", default="10000", help="comma-separated store sizes, e.g. 10000,100000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--embed-adds", type=int, default=1000, help="adds timed with embedding (batches of 100)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime and FAISS threads")
    parser.add_argument("--cache", type=Path, default=Path(".cache/bench-memory"))
    parser.add_argument("--out", type=Path, default=Path("eval/results/memory.json"))
    args = parser.parse_args()

    import faiss

    from apex_models.evaluation.results import write_result
    from apex_models.runtime import load_bundle

    faiss.omp_set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    embedder = bundle.embedder(precision=args.precision, intra_op_threads=args.threads)
    queries = make_queries(args.queries)
    results = {}
    for n in (int(s) for s in args.sizes.split(",")):
        results[str(n)] = bench_size(n, embedder, queries, args.cache, args.cache, min(args.embed_adds, n))
        print(json.dumps(results[str(n)]), file=sys.stderr)
    cmd = "python eval/bench_memory.py " + " ".join(sys.argv[1:])
    write_result(args.out, "memory store: search latency, throughput, open time, recall", results,
                 command=cmd.strip(),
                 extra={"bundle_version": bundle.manifest.bundle_version, "precision": args.precision,
                        "threads": args.threads, "queries": args.queries,
                        "note": "peak_rss_mib is the process peak so far (sizes run in one process, smallest first)"})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
