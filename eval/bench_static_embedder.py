"""Would a static embedder buy the store 1,000 adds a second, and at what cost in relevance?

    python eval/bench_static_embedder.py --bundle export/bundles/default --sources data/sources
    python eval/bench_static_embedder.py --sources data/sources   # builds a bundle of the packaged MiniLM first

Adding a memory costs one transformer pass; on two cores that holds the store near 50
adds a second with embedding (eval/results/memory.md), against a goal of 1,000. A static
embedder (models/static_embedder.py: per-token vectors distilled from the bundle's
model, optionally fitted to its sentence embeddings on the pipeline's corpora) costs a
table lookup per token. This runs, in one process: the distillation (plain, and fitted
on `--fit-texts` corpus texts), then for the bundle's embedder and each static one a
fresh store filled with CoSQA test's 6,267 functions (adds/s with embedding) and every
test query through `MemoryStore.search` (dense, and hybrid at the store's default keyword
weight and at 1). Results: eval/results/static-embedder.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import tempfile
import time
from pathlib import Path

from bench_store_relevance import given_or_built_bundle, score_store

log = logging.getLogger("bench_static_embedder")


def corpus_texts(sources: Path) -> list[str]:
    """Texts of the ingest_sources records (Q&A, tldr, CoNaLa, docs), never a benchmark."""
    texts = []
    for path in sorted(sources.glob("*.jsonl")):
        with path.open(encoding="utf-8") as fh:
            texts += [json.loads(line)["text"] for line in fh if line.strip()]
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="bundle folder; default: build one of the packaged MiniLM")
    parser.add_argument("--sources", type=Path, required=True, help="the ingest_sources stage's folder (data/sources)")
    parser.add_argument("--shared", type=Path, default=None, help="shared folder (default: params' paths.shared)")
    parser.add_argument("--dims", type=int, default=384, help="static vector size (PCA)")
    parser.add_argument("--fit-texts", type=int, default=20000, help="corpus texts the fitted table learns from")
    parser.add_argument("--fit-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("eval/results/static-embedder.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[bench-static] %(message)s")

    from apex_models.config import REPO_ROOT, load_params
    from apex_models.data.embedder_dataset import write_cosqa_beir
    from apex_models.evaluation.results import write_result
    from apex_models.models.static_embedder import distill_static
    from apex_models.runtime import StoreConfig
    from apex_models.runtime.static_embedder import StaticEmbedder

    shared = args.shared or Path(load_params(REPO_ROOT / "params.yaml").paths.shared)
    texts = corpus_texts(args.sources)
    if not texts:
        parser.error(f"no *.jsonl records under {args.sources}: run the ingest_sources stage first")
    random.Random(args.seed).shuffle(texts)
    with tempfile.TemporaryDirectory(prefix="apex-static-") as tmp:
        work = Path(tmp)
        cosqa = write_cosqa_beir(shared, "test", work / "cosqa-test", None, None, args.seed)
        if cosqa is None:
            parser.error(f"CoSQA not found under {shared}")
        bundle = given_or_built_bundle(args.bundle, work)
        spec = bundle.manifest.models["embedder"]
        if spec.safetensors_dir is None:
            parser.error(f"{bundle.root}: the embedder has no full-precision folder to distil from")
        hf = bundle.root / spec.safetensors_dir
        distilled: dict[str, dict] = {}
        for name, fit in (("static", 0), ("static_fitted", args.fit_texts)):
            started = time.perf_counter()
            made = distill_static(hf, work / name, dims=args.dims, corpus=texts, fit_texts=texts[:fit] or None,
                                  fit_steps=args.fit_steps, teacher_max_length=128, seed=args.seed)
            distilled[name] = {**made, "distill_s": round(time.perf_counter() - started, 1)}
        weights = [StoreConfig().keyword_weight, 1.0]
        embedders = {"onnx": bundle.embedder(), **{n: StaticEmbedder(work / n) for n in distilled}}
        results = {name: score_store(embedder, cosqa, work, weights, keyword=name == "onnx")
                   for name, embedder in embedders.items()}
        for name in distilled:
            results[name]["distillation"] = distilled[name]
        sample = texts[:5000]
        for name, embedder in embedders.items():
            started = time.perf_counter()
            embedder.encode_documents(sample)
            results[name]["encode_texts_per_s"] = round(len(sample) / (time.perf_counter() - started), 1)
        write_result(args.out, "static embedder against the bundle's, in the store", results,
                     extra={"benchmark": "cosqa-test", "fit_texts": args.fit_texts, "dims": args.dims})
    base = results["onnx"]["adds_per_s"]
    for name, r in results.items():
        modes = "  ".join(f"{m} MRR@10 {v['mrr@10']:.4f}" for m, v in r["modes"].items())
        print(f"{name:14s} adds/s {r['adds_per_s']:8.1f} ({r['adds_per_s'] / base:5.1f}x)  "
              f"encode/s {r['encode_texts_per_s']:8.1f}  {modes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
