"""Benchmark (not a test): searching among a filter's rows in a large store, both paths.

`DenseIndex.search_among` answers a filtered search by an HNSW walk restricted to the
filter's rows (beam FILTER_BEAM_FACTOR x fetch / share) or by an exact scan of them,
whichever its measured costs price lower (runtime/dense.py). This measures, per memory
kind (each kind is one filter, from a few percent of the rows to most of them):

- the hybrid search with that kind filter as the store runs it (query embedding
  included), p50 / p99, beside the unfiltered hybrid search of the same run;
- the dense list among the rows by each path forced (the walk at each `--factors` beam
  factor, and the exact scan), p50 / p99, and the walk's recall@10 against the scan;
- which path and beam the cost model picks.

The store is built as eval/bench_memory.py builds its tiers (real memory texts from
`--corpus`, the first `--embedded` vectors real and the rest noisy copies, cached under
`--cache`) and kept there between runs (`--rebuild` to start again).

    python eval/bench_filters.py --bundle export/bundles/default --size 1000000 --embedded 100000

Writes eval/results/filters.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import memory_corpus  # noqa: E402
from bench_memory import peak_rss_mib, percentiles, tier_vectors, timed  # noqa: E402

PASSPHRASE = "benchmark passphrase"


def build(folder: Path, embedder, items: list[dict], vectors: np.ndarray) -> float:
    """Fill a new store with precomputed vectors; seconds taken."""
    import faiss

    from apex_models.runtime import MemoryStore

    faiss.omp_set_num_threads(2)  # bulk HNSW insertion may use every core
    start = time.perf_counter()
    with MemoryStore.open(folder, embedder, passphrase=PASSPHRASE) as store:
        for i in range(0, len(items), 5000):
            store.add_many(items[i:i + 5000], vectors=vectors[i:i + 5000])
    faiss.omp_set_num_threads(1)
    return round(time.perf_counter() - start, 1)


def forced(dense, vectors: np.ndarray, rows: np.ndarray, fetch: int, factor: float | None) -> dict[str, Any]:
    """The dense list among `rows` by one path: the walk at `factor`, or the scan (None)."""
    import apex_models.runtime.dense as dense_module

    saved = dense_module.HNSW_SLOT_US, dense_module.FILTER_BEAM_FACTOR
    dense_module.HNSW_SLOT_US = 10.0 ** 9 if factor is None else 0.0
    if factor is not None:
        dense_module.FILTER_BEAM_FACTOR = factor
    try:
        lists, samples = [], []
        for v in vectors:
            start = time.perf_counter()
            lists.append(dense.search_among(v, rows, fetch))
            samples.append((time.perf_counter() - start) * 1000)
    finally:
        dense_module.HNSW_SLOT_US, dense_module.FILTER_BEAM_FACTOR = saved
    return {"lists": lists, **percentiles(samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("export/bundles/default"))
    parser.add_argument("--corpus", type=Path, nargs="+", default=[Path("data/ingest/code.jsonl"),
                                                                    Path("data/sources")])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--embedded", type=int, default=100_000, help="texts embedded for real (cached)")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--factors", default="1,1.5,2", help="beam factors the walk is timed at")
    parser.add_argument("--cache", type=Path, default=Path("~/.cache/apex-models/bench-memory"))
    parser.add_argument("--rebuild", action="store_true", help="build the store again even when it exists")
    parser.add_argument("--out", type=Path, default=Path("eval/results/filters.json"))
    args = parser.parse_args()

    import faiss

    import apex_models.runtime.dense as dense_module
    from apex_models.evaluation.results import write_result
    from apex_models.runtime import MemoryStore, load_bundle

    faiss.omp_set_num_threads(1)
    embedder = load_bundle(args.bundle).embedder()
    items = memory_corpus.memory_items(args.corpus, args.size)
    queries = memory_corpus.queries(args.corpus, args.queries)
    folder = args.cache.expanduser() / "work" / f"filters-{args.size}"
    built_s = None
    if args.rebuild or not (folder / "memories.db").exists():
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        real = memory_corpus.cached_vectors(embedder, [x["text"] for x in items[:args.embedded]], args.cache)
        built_s = build(folder, embedder, items, tier_vectors(np.asarray(real), args.size))
    factors = [float(f) for f in args.factors.split(",")]
    results: dict[str, Any] = {"memories": args.size, "build_s": built_s, "kinds": {}}
    with MemoryStore.open(folder, embedder, passphrase=PASSPHRASE) as store:
        store.search(queries[0], k=10)  # the BM25 index, when the open did not restore it
        dense = store._dense
        vectors = embedder.encode_queries(queries)
        fetch = max(store.config.candidates, 2 * 10)
        results["hybrid_unfiltered"] = timed(lambda q: store.search(q, k=10), queries)
        kinds = sorted({x["kind"] for x in items})
        for kind in kinds:
            rows = store._allowed(kind, None, None, None, None)
            beam = dense.filter_beam(len(rows), min(fetch, len(rows)))
            scan = forced(dense, vectors, rows, fetch, None)
            truth = [{r for r, _ in hits[:10]} for hits in scan.pop("lists")]
            row: dict[str, Any] = {
                "rows": int(len(rows)), "share": round(len(rows) / dense.ntotal, 4),
                "model": {"path": "scan" if beam is None else "walk", "beam": beam,
                          "scan_us": round(dense_module.exact_scan_us(len(rows), dense.ntotal))},
                "hybrid_filtered": timed(lambda q: store.search(q, k=10, kind=kind), queries),
                "dense_scan": scan, "dense_walk": {}}
            for factor in factors:
                walk = forced(dense, vectors, rows, fetch, factor)
                found = [{r for r, _ in hits[:10]} for hits in walk.pop("lists")]
                walk["recall_at_10_vs_scan"] = round(float(np.mean([len(f & t) / 10 for f, t in zip(found, truth)])), 4)
                row["dense_walk"][str(factor)] = walk
            results["kinds"][kind] = row
            print(kind, row, flush=True)
    results["peak_rss_mib"] = peak_rss_mib()
    write_result(args.out, "filtered search: the walk and the scan among a filter's rows", results,
                 extra={"fetch": fetch, "filter_beam_factor": dense_module.FILTER_BEAM_FACTOR,
                        "vectors": f"first {args.embedded} texts embedded; the rest noisy copies (bench_memory.py)"})


if __name__ == "__main__":
    main()
