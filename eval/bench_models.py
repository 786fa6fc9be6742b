"""Benchmark (not a test): every model of a bundle, torch fp32 vs ONNX fp32 vs ONNX int8.

For each model and backend, in a fresh process (so peak memory is that backend's alone,
and the ONNX workers never import torch), end to end with tokenisation:
- single-input latency p50/p99: one query (embedder, intent), one (query, candidate)
  pair (ranker), one code snippet (a token tagger such as the sensitivity model: its
  logits, and spans on the ONNX side), one whole plan for one goal (planner: greedy decoding to the end token
  or the spec's max_new_tokens; torch through `generate`, ONNX through the two graphs
  with the KV cache; `--plan-repeats` plans timed, as each costs tens of milliseconds);
- batch throughput: inputs per second in batches of `--batch` (the ranker: one query with
  `--batch` candidates, i.e. re-ranking a top-k; the planner: plans per second);
- peak resident memory of the worker, and the model files' sizes.
Ratios are to torch fp32 of the same model in the same run. Threads are pinned (default 1).

    python eval/bench_models.py --bundle export/bundles/default
    python eval/bench_models.py --bundle B1 --bundle B2 --threads 1 --repeats 200

A model in several bundles (the embedder beside each `<name>-candidate` bundle of
eval/export_candidates.py) is measured once, from the first bundle that has it.

Writes eval/results/models-latency.json and eval/results/models-latency.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
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
SNIPPETS = [
    "def read_lines(path):\n    with open(path) as fh:\n        return [line.rstrip('\\n') for line in fh]",
    "sorted(d.items(), key=lambda kv: kv[1])",
    "from datetime import datetime\ndatetime.strptime(s, '%Y-%m-%d')",
    "if key in mapping:\n    return mapping[key]",
    "list(dict.fromkeys(items))",
    "resp.json()",
    "[x for sub in nested for x in sub]",
    "subprocess.run(cmd, capture_output=True, text=True).stdout",
]
BACKENDS = ("torch_fp32", "onnx_fp32", "onnx_int8")


def _stats(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(statistics.fmean(ms), 3)}


def _timed(fn, inputs: list, repeats: int, warmup: int = 5) -> list[float]:
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    out = []
    for i in range(repeats):
        started = time.perf_counter()
        fn(inputs[i % len(inputs)])
        out.append(time.perf_counter() - started)
    return out


def _torch_callables(bundle, name: str, spec, threads: int):
    """(single, batch) callables on the bundle's own safetensors, as a torch user would run them."""
    import torch

    torch.set_num_threads(threads)
    hf = bundle.root / spec.safetensors_dir
    if spec.task == "embedding":
        from apex_models.models.embedder import TorchEncoder

        enc = TorchEncoder.from_base(str(hf), pooling=spec.pooling, normalize=spec.normalize,
                                     query_max_length=spec.query_max_length, doc_max_length=spec.doc_max_length)
        return (lambda q: enc.encode_queries([q]), lambda qs: enc.encode_queries(qs, batch_size=len(qs)))
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(hf)
    if spec.task == "seq2seq_generation":
        from transformers import EncoderDecoderModel

        planner = EncoderDecoderModel.from_pretrained(hf).eval()

        def generate(goals):
            with torch.inference_mode():
                enc = tok(goals, padding=True, truncation=True, max_length=spec.max_source_length, return_tensors="pt")
                return planner.generate(**enc, max_new_tokens=spec.max_new_tokens, do_sample=False, num_beams=1)
        return (lambda q: generate([q]), generate)
    if spec.task == "token_classification":
        from transformers import AutoModelForTokenClassification

        model = AutoModelForTokenClassification.from_pretrained(hf).eval()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(hf).eval()

    def run(a, b=None):
        with torch.inference_mode():
            return model(**tok(a, b, padding=True, truncation=True, max_length=spec.max_length,
                               return_tensors="pt")).logits
    if spec.task == "cross_encoder":
        return (lambda pair: run([pair[0]], [pair[1]]), lambda qd: run([qd[0]] * len(qd[1]), qd[1]))
    return (lambda q: run([q]), lambda qs: run(qs))


def _onnx_callables(bundle, name: str, spec, precision: str, threads: int):
    """(single, batch) callables through the runtime's classes. Their batches would go to a
    bulk session with a thread per core; it gets `threads` too, as torch does."""
    if spec.task == "embedding":
        m = bundle.embedder(name, precision, intra_op_threads=threads, bulk_threads=threads)
        return (lambda q: m.encode_queries([q]), lambda qs: m.encode_queries(qs, batch_size=len(qs)))
    if spec.task == "cross_encoder":
        m = bundle.ranker(name, precision, intra_op_threads=threads, bulk_threads=threads)
        return (lambda pair: m.score(pair[0], [pair[1]]), lambda qd: m.score(qd[0], qd[1], batch_size=len(qd[1])))
    if spec.task == "token_classification":
        m = bundle.token_classifier(name, precision, intra_op_threads=threads, bulk_threads=threads)
        return (lambda t: m.spans([t]), lambda ts: m.spans(ts, batch_size=len(ts)))
    if spec.task == "seq2seq_generation":
        m = bundle.planner(name, precision, intra_op_threads=threads)
        return (lambda q: m.generate_ids([q]), m.generate_ids)
    m = bundle.classifier(name, precision, intra_op_threads=threads, bulk_threads=threads)
    return (lambda q: m.classify([q]), lambda qs: m.classify(qs, batch_size=len(qs)))


def worker(bundle_dir: str, name: str, backend: str, threads: int, repeats: int, batch: int,
           plan_repeats: int = 30) -> dict:
    from apex_models.runtime import load_bundle

    bundle = load_bundle(bundle_dir)
    spec = bundle.spec(name)
    if backend == "torch_fp32":
        single, batched = _torch_callables(bundle, name, spec, threads)
    else:
        single, batched = _onnx_callables(bundle, name, spec, backend.split("_")[1], threads)
    if spec.task == "cross_encoder":
        singles = [(q, SNIPPETS[i % len(SNIPPETS)]) for i, q in enumerate(QUERIES)]
        cands = (SNIPPETS * (batch // len(SNIPPETS) + 1))[:batch]
        batches = [(q, cands) for q in QUERIES]
    else:
        pool = SNIPPETS if spec.task == "token_classification" else QUERIES   # a tagger reads memory text
        singles = pool
        texts = (pool * (batch // len(pool) + 1))[:batch]
        batches = [texts]
    if spec.task == "seq2seq_generation":
        repeats = plan_repeats
    single = _stats(_timed(single, singles, repeats))
    n_batches = max(3, repeats // 20)
    seconds = _timed(batched, batches, n_batches, warmup=1)
    return {**single, "batch_per_s": round(batch / statistics.median(seconds), 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _sizes(bundle, name: str, spec) -> dict[str, int]:
    sizes = {p: bundle.manifest.files[f].bytes for p, f in spec.onnx.items()}
    for p, f in (getattr(spec, "decoder_onnx", None) or {}).items():   # the planner: both graphs
        sizes[p] += bundle.manifest.files[f].bytes
    if spec.safetensors_dir:
        sizes["safetensors"] = bundle.manifest.files[f"{spec.safetensors_dir}/model.safetensors"].bytes
    return sizes


def markdown(results: dict) -> str:
    lines = ["| model | backend | p50 ms | p99 ms | batch/s | x torch (p50) | x torch (batch) | peak RSS MiB | file MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for backend in BACKENDS:
            b = r["backends"].get(backend)
            if not b:
                continue
            size = r["sizes_bytes"].get({"torch_fp32": "safetensors", "onnx_fp32": "fp32",
                                         "onnx_int8": "int8"}[backend], 0) / 1e6
            lines.append(f"| {name} | {backend} | {b['p50_ms']} | {b['p99_ms']} | {b['batch_per_s']} | "
                         f"{b.get('speedup_p50', 1.0)} | {b.get('speedup_batch', 1.0)} | {b['peak_rss_mib']} | "
                         f"{size:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eval/bench_models.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, action="append", default=[],
                        help="bundle folder (repeatable: the models of every bundle are measured)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads for every backend")
    parser.add_argument("--repeats", type=int, default=200, help="single-input calls timed per backend")
    parser.add_argument("--batch", type=int, default=32, help="inputs per batch (ranker: candidates per query)")
    parser.add_argument("--plan-repeats", type=int, default=30, help="single plans timed per backend (planner)")
    parser.add_argument("--out", type=Path, default=Path("eval/results/models-latency.json"))
    parser.add_argument("--worker", nargs=3, metavar=("BUNDLE", "MODEL", "BACKEND"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.threads, args.repeats, args.batch, args.plan_repeats)))
        return 0

    if not args.bundle:
        parser.error("give at least one --bundle")
    from apex_models.evaluation.results import write_result
    from apex_models.runtime import load_bundle

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results: dict = {}
    for bundle_dir in args.bundle:
        bundle = load_bundle(bundle_dir)
        for name in bundle.model_names:
            if name in results:  # a candidate bundle repeats the shipped embedder: measured once, from the first
                continue
            spec = bundle.spec(name)
            row = {"task": spec.task, "bundle": bundle.manifest.bundle_version, "sizes_bytes": _sizes(bundle, name, spec),
                   "backends": {}}
            for backend in BACKENDS:
                if backend.startswith("onnx_") and backend[5:] not in spec.onnx:
                    row["backends"][backend] = None  # not shipped (e.g. int8 failed its parity gate)
                    continue
                print(f"[bench] {name} {backend}", file=sys.stderr)
                proc = subprocess.run([sys.executable, __file__, "--worker", str(bundle_dir), name, backend,
                                       "--threads", str(args.threads), "--repeats", str(args.repeats),
                                       "--batch", str(args.batch), "--plan-repeats", str(args.plan_repeats)],
                                      capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    raise RuntimeError(f"{name} {backend} failed:\n{proc.stderr[-3000:]}")
                row["backends"][backend] = json.loads(proc.stdout.strip().splitlines()[-1])
            base = row["backends"]["torch_fp32"]
            for b in filter(None, row["backends"].values()):
                b["speedup_p50"] = round(base["p50_ms"] / b["p50_ms"], 2)
                b["speedup_batch"] = round(b["batch_per_s"] / base["batch_per_s"], 2)
            results[name] = row
    extra = {"threads": args.threads, "repeats": args.repeats, "plan_repeats": args.plan_repeats,
             "batch": args.batch,
             "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
             "anchor": "sentence-transformers: ONNX int8 at 3.08x torch fp32 on CPU for short texts"}
    write_result(args.out, "per-model latency, throughput, memory: torch fp32 vs ONNX fp32 vs int8", results,
                 extra=extra)
    table = markdown(results)
    args.out.with_suffix(".md").write_text(
        f"# Model latency (threads={args.threads}, batch={args.batch}; load average at end "
        f"{extra['load_average_at_end']})\n\n{table}")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
