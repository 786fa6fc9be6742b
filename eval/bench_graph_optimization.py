"""Benchmark (not a test): does ONNX Runtime's offline transformer fusion make the models faster?

The export can run `optimize_bert_graph` (ONNX Runtime's attention / LayerNorm / GELU
fusions, `export.optimize_graph`) before quantising, and keeps the fused graph when the
parity gates still hold. Holding parity says nothing about speed, and the session the
runtime opens already applies ONNX Runtime's own online optimisations, so this script
measures what the offline pass adds, per model of the given bundles:

1. the plain graph, exported again from the bundle's own safetensors (`hf/`) with the
   export's exporter (`export_embedder_onnx` / `export_head_onnx`), and the fused one
   (`optimize_bert_graph` on it); each quantised with the export's dynamic int8;
2. for each graph and precision, through the runtime's own classes (tokenisation
   included, one thread): single-input p50 and the p50 of a batch of 32, interleaved
   (plain, fused, plain, fused ...) so that drift hits both alike;
3. the ratio fused / plain (below 1: fusion is faster).

    python eval/bench_graph_optimization.py --bundle export/bundles/default \
        --bundle export/bundles/ranker-candidate

Writes eval/results/graph-optimization.json and .md. The planner is not measured: its
encoder/decoder-with-past graphs are written by hand and never fused.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

QUERIES = ["python read a file line by line", "sort a dict by value", "convert string to datetime",
           "how to check if a key exists in a dictionary", "TypeError: 'NoneType' object is not subscriptable",
           "plan the migration to postgres 16", "why is psycopg pinned", "regex to match an email address"]
SNIPPETS = ["def read_lines(path):\n    with open(path) as fh:\n        return [line.rstrip('\\n') for line in fh]",
            "sorted(d.items(), key=lambda kv: kv[1])", "from datetime import datetime\ndatetime.strptime(s, '%Y-%m-%d')",
            "if key in mapping:\n    return mapping[key]", "list(dict.fromkeys(items))", "resp.json()",
            "DATABASE_URL = os.environ['DATABASE_URL']", "[x for sub in nested for x in sub]"]
TASKS = ("embedding", "cross_encoder", "sequence_classification", "token_classification")


def _calls(task: str, model) -> dict[str, Callable[[], Any]]:
    """The single-input and batch-of-32 call of one runtime model."""
    batch_q, batch_s = QUERIES * 4, SNIPPETS * 4
    if task == "embedding":
        return {"single": lambda: model.encode_queries(QUERIES[:1]), "batch": lambda: model.encode_documents(batch_s)}
    if task == "cross_encoder":
        return {"single": lambda: model.score(QUERIES[0], SNIPPETS[:1]), "batch": lambda: model.score(QUERIES[1], batch_s)}
    if task == "sequence_classification":
        return {"single": lambda: model.classify(QUERIES[:1]), "batch": lambda: model.classify(batch_q)}
    return {"single": lambda: model.spans(SNIPPETS[:1]), "batch": lambda: model.spans(batch_s)}


def _graphs(bundle, name: str, spec, work: Path) -> dict[str, Path]:
    """plain/fused x fp32/int8 graph files for one model, from the bundle's safetensors."""
    from apex_models.export.onnx import export_embedder_onnx, export_head_onnx, optimize_bert_graph, quantize_int8

    hf = bundle.root / spec.safetensors_dir
    config = json.loads((hf / "config.json").read_text())
    plain = work / "plain.fp32.onnx"
    if spec.task == "embedding":
        export_embedder_onnx(hf, plain, pooling=spec.pooling, normalize=spec.normalize)
    else:
        export_head_onnx(hf, plain, spec.task)
    optimize_bert_graph(plain, work / "fused.fp32.onnx", config["num_attention_heads"], config["hidden_size"])
    for graph in ("plain", "fused"):
        quantize_int8(work / f"{graph}.fp32.onnx", work / f"{graph}.int8.onnx")
    return {f"{g}/{p}": work / f"{g}.{p}.onnx" for g in ("plain", "fused") for p in ("fp32", "int8")}


def _model(task: str, work: Path, spec, precision: str, graph: Path):
    from apex_models.runtime.embedder import OnnxEmbedder
    from apex_models.runtime.models import OnnxClassifier, OnnxRanker, OnnxTokenClassifier

    cls = {"embedding": OnnxEmbedder, "cross_encoder": OnnxRanker, "sequence_classification": OnnxClassifier,
           "token_classification": OnnxTokenClassifier}[task]
    # The bundle's tokenizer beside the graphs; the spec points at the graph under test.
    return cls(work, spec.model_copy(update={"onnx": {precision: graph.name}, "tokenizer": "tokenizer.json"}),
               precision, intra_op_threads=1, bulk_threads=1)


def measure(bundle, name: str, repeats: int, batch_repeats: int) -> dict[str, Any]:
    import shutil

    spec = bundle.spec(name)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        shutil.copy2(bundle.root / spec.tokenizer, work / "tokenizer.json")
        graphs = _graphs(bundle, name, spec, work)
        out: dict[str, Any] = {"task": spec.task, "shipped_graph": spec.parity.get("graph_optimization", "none")}
        for precision in ("fp32", "int8"):
            calls = {g: _calls(spec.task, _model(spec.task, work, spec, precision, graphs[f"{g}/{precision}"]))
                     for g in ("plain", "fused")}
            for g in calls:  # warm-up
                for _ in range(5):
                    calls[g]["single"](), calls[g]["batch"]()
            times: dict[str, dict[str, list[float]]] = {g: {"single": [], "batch": []} for g in calls}
            for kind, n in (("single", repeats), ("batch", batch_repeats)):
                for _ in range(n):
                    for g in calls:
                        start = time.perf_counter()
                        calls[g][kind]()
                        times[g][kind].append((time.perf_counter() - start) * 1000)
            row = {g: {f"{k}_p50_ms": round(statistics.median(v), 3) for k, v in t.items()} for g, t in times.items()}
            row["fused_over_plain"] = {k: round(row["fused"][f"{k}_p50_ms"] / row["plain"][f"{k}_p50_ms"], 3)
                                       for k in ("single", "batch")}
            out[precision] = row
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = ["| model | precision | plain p50 ms (1 / 32) | fused p50 ms (1 / 32) | fused / plain (1 / 32) |",
             "|---|---|---|---|---|"]
    for name, r in results.items():
        for p in ("fp32", "int8"):
            x = r[p]
            lines.append(f"| {name} | {p} | {x['plain']['single_p50_ms']} / {x['plain']['batch_p50_ms']} | "
                         f"{x['fused']['single_p50_ms']} / {x['fused']['batch_p50_ms']} | "
                         f"{x['fused_over_plain']['single']} / {x['fused_over_plain']['batch']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="eval/bench_graph_optimization.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, action="append", required=True,
                        help="bundle to measure (repeatable; a model in several is measured once)")
    parser.add_argument("--repeats", type=int, default=300, help="single-input calls per graph (default: %(default)s)")
    parser.add_argument("--batch-repeats", type=int, default=60, help="batch calls per graph (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("eval/results/graph-optimization.json"))
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from apex_models.evaluation.results import write_result
    from apex_models.runtime import load_bundle

    results: dict[str, Any] = {}
    for path in args.bundle:
        bundle = load_bundle(path)
        for name in bundle.model_names:
            spec = bundle.spec(name)
            if name in results or spec.task not in TASKS or not spec.safetensors_dir:
                continue
            print(f"[graph-optimization] {name}", file=sys.stderr)
            results[name] = measure(bundle, name, args.repeats, args.batch_repeats)
    write_result(args.out, "offline ORT transformer fusion vs the plain graph, per model", results,
                 extra={"threads": 1, "repeats": args.repeats, "batch_repeats": args.batch_repeats,
                        "onnxruntime": ort.__version__})
    table = markdown(results)
    args.out.with_suffix(".md").write_text("# Offline graph fusion vs plain graph (1 thread; p50 ms)\n\n" + table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
