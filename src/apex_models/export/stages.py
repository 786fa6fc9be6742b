"""The export and bundle stages.

export: merged torch model -> ONNX fp32 and dynamic int8, then gates that fail the
stage: parity against torch on a fixed probe set, and int8 accuracy on CoSQA dev
(if int8 loses more than the configured share of fp32's MRR@10, fp32 becomes the
default precision and the manifest says why).
bundle: the versioned folder every runtime loads: files, model card, manifest.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from apex_models import __version__
from apex_models.config import Params
from apex_models.evaluation.results import write_result
from apex_models.layout import layout
from apex_models.tracking import data_hashes, git_commit, stage_run

FP32, INT8 = "model.fp32.onnx", "model.int8.onnx"


def _spec(params: Params, dimension: int, prefix: str = "", **fields: Any) -> dict[str, Any]:
    """The manifest entry of the embedder; `prefix` places its files inside a bundle."""
    cfg = params.embedder
    spec = {
        "task": "embedding", "base_model": cfg.base, "dimension": dimension, "pooling": cfg.pooling,
        "normalize": cfg.normalize, "query_max_length": cfg.query_max_length,
        "doc_max_length": cfg.doc_max_length, "tokenizer": f"{prefix}tokenizer.json",
        "onnx": {"fp32": f"{prefix}{FP32}", "int8": f"{prefix}{INT8}"}, "default_precision": "int8",
    }
    return spec | fields


def onnx_dimension(onnx_path: Path) -> int:
    """The embedding width, read from the graph's output shape (no torch needed)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return model.graph.output[0].type.tensor_type.shape.dim[-1].dim_value


def _dev_mrr(embedder, dev_dir: Path, limit: int, batch_size: int) -> float | None:
    from apex_models.evaluation.retrieval import BeirDataset, dense_run, evaluate_run, load_beir

    if not (dev_dir / "corpus.jsonl").is_file():
        return None
    ds = load_beir(dev_dir)
    queries = dict(list(ds.queries.items())[:limit])
    ds = BeirDataset(ds.corpus, queries, {q: ds.qrels[q] for q in queries})
    run = dense_run(ds, lambda t: embedder.encode_queries(t, batch_size),
                    lambda t: embedder.encode_documents(t, batch_size, progress=True))
    return evaluate_run(run, ds.qrels)["mrr@10"]


def run_export(params: Params) -> dict[str, Any]:
    from apex_models.export.onnx import export_embedder_onnx, quantize_int8, save_tokenizer_json
    from apex_models.export.parity import ParityError, check_embedding_gate, embedding_parity, probe_texts
    from apex_models.models.embedder import TorchEncoder
    from apex_models.runtime.bundle import ModelSpec
    from apex_models.runtime.embedder import OnnxEmbedder

    lay, cfg, gates = layout(params), params.embedder, params.export.gates
    merged, out = lay.embedder_model / "merged", lay.export_embedder
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with stage_run("export", params, ["embedder", "export"], data={"models/embedder": merged}) as mlflow:
        export_embedder_onnx(merged, out / FP32, pooling=cfg.pooling, normalize=cfg.normalize,
                             opset=params.export.opset)
        save_tokenizer_json(merged, out / "tokenizer.json", max_length=cfg.doc_max_length)
        quantize_int8(out / FP32, out / INT8, per_channel=params.export.int8.per_channel,
                      reduce_range=params.export.int8.reduce_range)
        spec = ModelSpec.model_validate(_spec(params, onnx_dimension(out / FP32)))
        texts = probe_texts(params.export.probe_texts)
        reference = TorchEncoder.from_base(str(merged), pooling=cfg.pooling, normalize=cfg.normalize,
                                           query_max_length=cfg.query_max_length,
                                           doc_max_length=cfg.doc_max_length).encode_documents(texts)
        embedders = {p: OnnxEmbedder(out, spec, p) for p in ("fp32", "int8")}
        parity = {p: embedding_parity(reference, e.encode_documents(texts)) for p, e in embedders.items()}
        report: dict[str, Any] = {"parity": parity, "gates": gates.model_dump()}
        mlflow.log_metrics({f"parity/{p}/{k}": float(v) for p, s in parity.items() for k, v in s.items()
                            if isinstance(v, (int, float))})
        (out / "parity.json").write_text(json.dumps(report, indent=2) + "\n")  # kept even if a gate fails
        check_embedding_gate("embedder fp32", parity["fp32"], min_cosine=gates.fp32_min_cosine)
        check_embedding_gate("embedder int8", parity["int8"], min_cosine=gates.int8_min_cosine,
                             mean_cosine=gates.int8_mean_cosine)

        dev = {p: _dev_mrr(e, lay.benchmark("cosqa-dev"), params.export.eval_dev_queries,
                           params.evaluate.batch_size) for p, e in embedders.items()}
        default, reason = "int8", "int8 passed the parity and accuracy gates"
        if dev["fp32"] is not None:
            drop = (dev["fp32"] - dev["int8"]) / max(dev["fp32"], 1e-9)
            report["dev_mrr@10"] = dev | {"relative_drop": round(drop, 6)}
            mlflow.log_metrics({"dev/fp32_mrr_at_10": dev["fp32"], "dev/int8_mrr_at_10": dev["int8"]})
            if drop > gates.int8_max_mrr_drop:
                default = "fp32"
                reason = (f"int8 CoSQA dev MRR@10 {dev['int8']:.4f} is {drop:.2%} below fp32's "
                          f"{dev['fp32']:.4f} (allowed {gates.int8_max_mrr_drop:.0%})")
        else:
            reason = "int8 passed parity; no CoSQA dev set to check accuracy"
        report.update(default_precision=default, default_reason=reason,
                      sizes={p: (out / f).stat().st_size for p, f in (("fp32", FP32), ("int8", INT8))},
                      export_run_id=mlflow.active_run().info.run_id)
        write_result(lay.results / "export-embedder.json", "embedder export gates", report,
                     command="dvc repro export", extra={"profile": params.profile})
        mlflow.log_dict(report, "export_report.json")
    return report


def model_card(params: Params, spec: dict[str, Any], data_report: dict[str, Any],
               eval_results: dict[str, Any]) -> str:
    """A model card: base, data and licences, metrics, parity, intended use, limits."""
    from apex_models.evaluation.stages import markdown_table

    licences = data_report.get("by_license") or data_report.get("licenses") or {}
    lic_lines = "\n".join(f"- {k}: {v}" for k, v in sorted(licences.items())) or "- see NOTICE"
    parity = json.dumps(spec["parity"], indent=2)
    return f"""# apex-models embedder ({params.profile} profile)

A code-aware bi-encoder: developer queries and code to unit vectors of
{spec['dimension']} dimensions ({spec['pooling']} pooling, L2-normalised), compared by inner product.

- **Base model**: `{spec['base_model']}`, LoRA r={params.embedder.lora.r} on {', '.join(params.embedder.lora.target_modules)}, merged.
- **Training**: in-batch-negatives contrastive loss, {params.embedder.train.max_steps} steps of
  {params.embedder.train.batch_size} pairs; the checkpoint with the best CoSQA dev MRR@10 ships.
- **Inputs**: queries truncated at {spec['query_max_length']} tokens, documents at {spec['doc_max_length']}.
- **Default precision**: {spec['default_precision']} ({spec['default_reason']}).

## Training data
(docstring summary -> function) pairs from permissively licensed Python distributions and
CoNaLa (Stack Overflow titles -> snippets, CC BY-SA 4.0), split by package and
decontaminated against every held-out benchmark. Pairs by licence:

{lic_lines}

## Evaluation (held out; test figures are the report)
{markdown_table(eval_results) if eval_results else 'not evaluated'}
## Parity with torch on the fixed probe set
```json
{parity}
```

## Intended use and limitations
Retrieval of Python code, snippets and developer notes by natural-language query,
inside the apex memory runtimes. Trained on English text and Python code only; other
languages work through the base model's general ability, unmeasured. Queries unlike
docstrings or question titles (very long prose, logs) are outside the training data.
"""


def run_bundle(params: Params) -> Path:
    """Assemble export/bundles/<name>: files, model card, manifest with checksums."""
    from apex_models.runtime.bundle import load_bundle, write_manifest

    lay = layout(params)
    src, bundle = lay.export_embedder, lay.bundle
    report = json.loads((lay.results / "export-embedder.json").read_text())["results"]
    train = json.loads((lay.embedder_model / "train_summary.json").read_text())
    eval_doc = json.loads((lay.results / "embedder.json").read_text())
    data_report = json.loads((lay.embedder_data / "report.json").read_text())
    tmp = bundle.with_name(bundle.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "embedder").mkdir(parents=True)
    for name in (FP32, INT8, "tokenizer.json"):
        shutil.copy2(src / name, tmp / "embedder" / name)
    metrics = {"eval": eval_doc["results"], "export_dev_mrr@10": report.get("dev_mrr@10"),
               "sizes_bytes": report["sizes"]}
    spec = _spec(params, onnx_dimension(src / FP32), prefix="embedder/", metrics=metrics, parity=report["parity"],
                 default_precision=report["default_precision"], default_reason=report["default_reason"],
                 mlflow_run_id=train.get("mlflow_run_id"), card="embedder/README.md")
    (tmp / "embedder" / "README.md").write_text(model_card(params, spec, data_report, eval_doc["results"]))
    (tmp / "embedder" / "NOTICE").write_text((lay.embedder_data / "NOTICE").read_text()
                                              if (lay.embedder_data / "NOTICE").is_file() else "")
    commit = git_commit()
    with stage_run("bundle", params, ["export"], data={"export/embedder": src}) as mlflow:
        manifest = {
            "schema_version": 1,
            "bundle_version": f"{__version__}+{params.profile}.{commit[:12]}",
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "git_commit": commit,
            "profile": params.profile,
            "data_hashes": data_hashes({"datasets/embedder": lay.embedder_data, "ingest/code": lay.code_files}),
            "models": {"embedder": spec},
        }
        write_manifest(tmp, manifest)
        load_bundle(tmp)  # never publish a bundle the runtime would refuse
        shutil.rmtree(bundle, ignore_errors=True)
        tmp.rename(bundle)
        mlflow.log_artifact(str(bundle / "manifest.json"))
        mlflow.set_tag("bundle_version", manifest["bundle_version"])
    return bundle
