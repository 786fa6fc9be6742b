"""Benchmark (not a test): does static int8 quantisation beat the dynamic int8 the bundle ships?

The export job ships dynamic int8 (weights quantised offline, activations at run time).
Static quantisation also fixes the activations' scales from a calibration set, which can
save the run-time range computation. This script measures it on the bundle's embedder:

1. calibration: `--calibration` texts cut from the project's own training corpus
   (`--corpus`, the same reader as eval/bench_memory.py), never a benchmark;
2. static int8 (QDQ, per-channel QInt8 weights, QUInt8 activations) with MinMax
   calibration, from the bundle's fp32 graph (Percentile and Entropy fail on its -inf
   attention-mask tensors);
3. for fp32, the shipped dynamic int8 and each static variant: cosine to fp32 on the
   export's 64 probe texts (the export gate: mean >= 0.99, min >= 0.98), single-query
   p50/p99 and batch-of-32 throughput, 1 thread, same process, interleaved.

    python eval/bench_static_int8.py --bundle export/bundles/default

Writes eval/results/static-int8.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import memory_corpus  # noqa: E402  (eval/ helper beside this script)


def _timed(fn, inputs: list, repeats: int, warmup: int = 5) -> list[float]:
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    out = []
    for i in range(repeats):
        start = time.perf_counter()
        fn(inputs[i % len(inputs)])
        out.append((time.perf_counter() - start) * 1000)
    return out


class _Calibration:
    """onnxruntime's CalibrationDataReader protocol over tokenised texts, one text per feed,
    each padded to `width` tokens (histogram calibrators stack activations, so every feed
    must have one shape; the padding is masked)."""

    def __init__(self, embedder, texts: list[str], width: int = 128) -> None:
        feeds = []
        for e in embedder._tokenizer(width).encode_batch(texts):
            ids = np.full((1, width), embedder._pad_id, dtype=np.int64)
            mask = np.zeros((1, width), dtype=np.int64)
            ids[0, :len(e.ids)], mask[0, :len(e.ids)] = e.ids, 1
            feeds.append({"input_ids": ids, "attention_mask": mask})
        self._feeds = iter(feeds)

    def get_next(self):
        return next(self._feeds, None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("export/bundles/default"))
    parser.add_argument("--corpus", type=Path, nargs="+", default=[Path("data/ingest/code.jsonl"), Path("data/sources")])
    parser.add_argument("--calibration", type=int, default=200, help="calibration texts")
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("eval/results/static-int8.json"))
    args = parser.parse_args()

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from apex_models.evaluation.results import write_result
    from apex_models.export.parity import probe_texts
    from apex_models.runtime import load_bundle
    from apex_models.runtime.embedder import OnnxEmbedder

    bundle = load_bundle(args.bundle)
    spec = bundle.spec("embedder")
    fp32 = bundle.embedder(precision="fp32")
    texts = [x["text"] for x in memory_corpus.memory_items(args.corpus, args.calibration)]
    probes = probe_texts(64)
    queries = memory_corpus.queries(args.corpus, 64)
    batch = (queries * 2)[:32]
    reference = fp32.encode_documents(probes)
    work = Path(tempfile.mkdtemp(prefix="static-int8-"))
    prepared = work / "prepared.onnx"
    quant_pre_process(str(fp32.onnx_path), str(prepared), skip_symbolic_shape=True)
    models = {"fp32": fp32, "dynamic_int8": bundle.embedder(precision="int8")}
    quantise_s = {}
    # MinMax only: the histogram calibrators (Percentile, Entropy) fail on this graph, whose
    # attention-mask tensors hold -inf ("autodetected range ... is not finite").
    for name, method in (("static_int8_minmax", CalibrationMethod.MinMax),):
        path = work / f"{name}.onnx"
        start = time.perf_counter()
        quantize_static(str(prepared), str(path), _Calibration(fp32, texts), quant_format=QuantFormat.QDQ,
                        per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                        calibrate_method=method)
        quantise_s[name] = round(time.perf_counter() - start, 1)
        spec_copy = spec.model_copy(update={"onnx": {**spec.onnx, name: str(path)}})
        models[name] = OnnxEmbedder(bundle.root, spec_copy, name)
    results = {}
    for name, model in models.items():
        vectors = model.encode_documents(probes)
        cos = np.sum(vectors * reference, axis=1)
        results[name] = {"cosine_to_fp32_mean": round(float(cos.mean()), 5), "cosine_to_fp32_min": round(float(cos.min()), 5),
                         "file_mb": round(model.onnx_path.stat().st_size / 1e6, 1), "single_ms": [], "batch_ms": []}
    for _ in range(3):   # interleaved rounds, so a busy moment hits every variant alike
        for name, model in models.items():
            results[name]["single_ms"] += _timed(lambda q: model.encode_queries([q]), queries, args.repeats // 3)
            results[name]["batch_ms"] += _timed(lambda b: model.encode_queries(b, batch_size=32), [batch], 5, warmup=1)
    for name, r in results.items():
        single, batched = r.pop("single_ms"), r.pop("batch_ms")
        r.update({"p50_ms": round(float(np.percentile(single, 50)), 3), "p99_ms": round(float(np.percentile(single, 99)), 3),
                  "batch_per_s": round(32 / (statistics.median(batched) / 1000), 1)})
        r["passes_export_gate"] = r["cosine_to_fp32_mean"] >= 0.99 and r["cosine_to_fp32_min"] >= 0.98
    base = results["dynamic_int8"]
    for r in results.values():
        r["p50_vs_dynamic"] = round(base["p50_ms"] / r["p50_ms"], 2)
        r["batch_vs_dynamic"] = round(r["batch_per_s"] / base["batch_per_s"], 2)
    write_result(args.out, "static vs dynamic int8 (embedder)", results,
                 command="python eval/bench_static_int8.py " + " ".join(sys.argv[1:]),
                 extra={"calibration_texts": len(texts), "quantise_s": quantise_s, "threads": 1,
                        "bundle_version": bundle.manifest.bundle_version})
    lines = ["| graph | cosine to fp32 mean / min | export gate | p50 / p99 ms | batch/s | x dynamic (p50 / batch) | MB |",
             "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['cosine_to_fp32_mean']} / {r['cosine_to_fp32_min']} | "
                     f"{'pass' if r['passes_export_gate'] else 'fail'} | {r['p50_ms']} / {r['p99_ms']} | "
                     f"{r['batch_per_s']} | {r['p50_vs_dynamic']} / {r['batch_vs_dynamic']} | {r['file_mb']} |")
    table = "\n".join(lines) + "\n"
    args.out.with_suffix(".md").write_text(f"# Static vs dynamic int8, embedder (1 thread)\n\n{table}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
