"""Benchmark (not a test): single-query embedding latency, torch vs ONNX fp32 vs ONNX int8.

All three run in one process on the same queries with the same thread count, so the
ratios compare like with like. End to end: tokenisation included.

    python eval/bench_embedder_latency.py --bundle export/bundles/default
    python eval/bench_embedder_latency.py --bundle B --threads 1 --repeats 300

Writes eval/results/embedder-latency.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

QUERIES = [
    "python read a file line by line", "sort a dict by value", "convert string to datetime",
    "how to check if a key exists in a dictionary", "remove duplicates from a list keeping order",
    "parse json from an http response", "flatten a nested list", "run a shell command and capture output",
    "merge two dataframes on a column", "regex to match an email address", "get the size of a file in bytes",
    "create a directory if it does not exist",
]


def _percentiles(samples_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_ms)
    return {"p50_ms": round(float(np.percentile(arr, 50)), 3), "p99_ms": round(float(np.percentile(arr, 99)), 3),
            "mean_ms": round(statistics.fmean(arr), 3)}


def time_single(encode, repeats: int, warmup: int = 10) -> dict[str, float]:
    for i in range(warmup):
        encode([QUERIES[i % len(QUERIES)]])
    samples = []
    for i in range(repeats):
        start = time.perf_counter()
        encode([QUERIES[i % len(QUERIES)]])
        samples.append((time.perf_counter() - start) * 1000)
    return _percentiles(samples)


def time_batch(encode, texts: list[str], rounds: int = 3) -> float:
    encode(texts[:8])
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        encode(texts)
        best = min(best, time.perf_counter() - start)
    return round(len(texts) / best, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("export/bundles/default"))
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for every engine")
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("eval/results/embedder-latency.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    from apex_models.evaluation.results import write_result
    from apex_models.models.embedder import TorchEncoder
    from apex_models.runtime import OnnxEmbedder, load_bundle

    torch.set_num_threads(args.threads)
    bundle = load_bundle(args.bundle)
    spec = bundle.manifest.models["embedder"]
    # torch runs the bundle's own full-precision weights, so all three engines run one model.
    weights = bundle.root / spec.safetensors_dir if spec.safetensors_dir else spec.base_model
    torch_enc = TorchEncoder.from_base(str(weights), pooling=spec.pooling, query_max_length=spec.query_max_length,
                                       doc_max_length=spec.doc_max_length)
    engines = {"torch_fp32": torch_enc.encode_queries}
    for precision in ("fp32", "int8"):
        emb = OnnxEmbedder(bundle.root, spec, precision, intra_op_threads=args.threads)
        engines[f"onnx_{precision}"] = emb.encode_queries
    batch = [QUERIES[i % len(QUERIES)] + f" {i}" for i in range(64)]
    results = {}
    for name, encode in engines.items():
        results[name] = time_single(encode, args.repeats) | {"batch64_texts_per_s": time_batch(encode, batch)}
        print(name, json.dumps(results[name]), file=sys.stderr)
    base = results["torch_fp32"]
    for name in ("onnx_fp32", "onnx_int8"):
        results[name]["speedup_p50_vs_torch"] = round(base["p50_ms"] / results[name]["p50_ms"], 2)
        results[name]["speedup_p99_vs_torch"] = round(base["p99_ms"] / results[name]["p99_ms"], 2)
    cmd = "python eval/bench_embedder_latency.py " + " ".join(sys.argv[1:])
    write_result(args.out, "embedder single-query latency", results, command=cmd.strip(),
                 extra={"bundle_version": bundle.manifest.bundle_version, "threads": args.threads,
                        "repeats": args.repeats})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
