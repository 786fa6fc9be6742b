"""The export and bundle stages.

export: merged torch model -> ONNX fp32 and dynamic int8 with the parity gates
(`export_embedder_artifacts`), then the accuracy gate: if int8 loses more than the
configured share of fp32's CoSQA dev MRR@10, fp32 becomes the default precision and the
manifest says why. bundle: the versioned folder every runtime loads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from apex_models import __version__
from apex_models.config import Params
from apex_models.evaluation.results import write_result
from apex_models.layout import layout
from apex_models.tracking import data_hashes, git_commit, stage_run


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


def accuracy_gate(dev: dict[str, float | None], max_drop: float) -> tuple[str, str, float | None]:
    """(default precision, reason, relative drop) from fp32's and int8's dev MRR@10."""
    if dev["fp32"] is None or dev["int8"] is None:
        return "int8", "int8 passed parity; no dev benchmark to check its accuracy", None
    drop = (dev["fp32"] - dev["int8"]) / max(dev["fp32"], 1e-9)
    if drop > max_drop:
        return "fp32", (f"int8 dev MRR@10 {dev['int8']:.4f} is {drop:.2%} below fp32's {dev['fp32']:.4f} "
                        f"(allowed {max_drop:.0%})"), drop
    return "int8", (f"int8 passed the parity gates and kept {1 - drop:.2%} of fp32's dev MRR@10; "
                    "about 4x smaller and faster"), drop


def run_export(params: Params) -> dict[str, Any]:
    from apex_models.export.bundle import export_embedder_artifacts
    from apex_models.export.heads import run_export_heads
    from apex_models.runtime.embedder import OnnxEmbedder

    lay, cfg, ex = layout(params), params.embedder, params.export
    out = lay.export_embedder
    champion = json.loads((lay.results / "promotion-embedder.json").read_text())["results"]["champion"]
    shutil.rmtree(out, ignore_errors=True)
    with stage_run("export", params, ["embedder", "export"]) as mlflow:
        # The registry's champion ships, whichever run produced it (maybe the base model).
        merged = Path(mlflow.artifacts.download_artifacts(champion["source"]))
        mlflow.set_tags({"champion_version": champion["version"], "champion_run_id": champion["run_id"]})
        gates = ex.gates.model_dump()
        spec = export_embedder_artifacts(
            merged, out, cfg.base, pooling=cfg.pooling, normalize=cfg.normalize,
            query_max_length=cfg.query_max_length, doc_max_length=cfg.doc_max_length, opset=ex.opset,
            per_channel=ex.int8.per_channel, reduce_range=ex.int8.reduce_range,
            gates={k: gates[k] for k in ("fp32_min_cosine", "int8_min_cosine", "int8_mean_cosine")},
            n_probe=ex.probe_texts)
        mlflow.log_metrics({f"parity/{p}/{k}": float(spec.parity[p][k]) for p in ("fp32", "int8")
                            for k in ("min", "mean")})
        dev = {p: _dev_mrr(OnnxEmbedder(out, spec, p), lay.benchmark("cosqa-dev"), ex.eval_dev_queries,
                           params.evaluate.batch_size) for p in ("fp32", "int8")}
        default, reason, drop = accuracy_gate(dev, ex.gates.int8_max_mrr_drop)
        if dev["fp32"] is not None:
            mlflow.log_metrics({f"dev/{p}/mrr_at_10": v for p, v in dev.items()})
        spec = spec.model_copy(update={"default_precision": default, "default_reason": reason,
                                       "mlflow_run_id": champion["run_id"]})
        (out / "spec.json").write_text(spec.model_dump_json(indent=2) + "\n")
        report = {"champion": champion, "parity": spec.parity, "dev_mrr@10": dev | {"relative_drop": drop},
                  "default_precision": default, "default_reason": reason,
                  "sizes_bytes": {p: (out / f).stat().st_size for p, f in spec.onnx.items()},
                  "export_run_id": mlflow.active_run().info.run_id}
        write_result(lay.results / "export-embedder.json", "embedder export gates", report,
                     command="dvc repro export", extra={"profile": params.profile})
        mlflow.log_dict(report, "export_report.json")
        heads = run_export_heads(params, lay.export_embedder.parent, mlflow)
        write_result(lay.results / "export-heads.json", "ranker and classifier export gates", heads,
                     command="dvc repro export", extra={"profile": params.profile})
        mlflow.log_dict(heads, "export_heads_report.json")
    return {**report, "heads": {name: {k: h.get(k) for k in ("exported", "default_precision", "reason")}
                                for name, h in heads.items()}}


def _training_lines(params: Params, train: dict[str, Any], champion: dict[str, Any]) -> str:
    if champion.get("kind") == "base":
        return (f"- **Training**: none. The registry's champion (v{champion['version']}) is the un-tuned base "
                "model: no fine-tuned candidate has beaten it on the selection benchmark yet.\n")
    if champion.get("run_id") != train.get("mlflow_run_id"):
        return (f"- **Training**: registry version v{champion['version']}, MLflow run {champion['run_id']} "
                "(an earlier run; the latest candidate did not beat it).\n")
    t, lora = params.embedder.train, params.embedder.lora
    best = train.get("best_dev_mrr@10")
    return (f"- **Training**: LoRA r={lora.r} on {', '.join(lora.target_modules)}, merged; in-batch-negatives "
            f"contrastive loss, {t.max_steps} steps of {t.batch_size} pairs, lr {t.lr}; checkpoint of step "
            f"{train.get('best_step')} kept for its CoSQA dev MRR@10 "
            f"{best if best is None else round(best, 4)} (base {train.get('base_dev_mrr@10')}).\n")


def _data_lines(report: dict[str, Any]) -> str:
    licences = "\n".join(f"- {k}: {v} pairs" for k, v in sorted(report.get("per_license", {}).items()))
    removed = report.get("decontamination", {}).get("removed")
    return ("(docstring summary -> function) pairs from permissively licensed Python distributions, and "
            "CoNaLa (Stack Overflow titles -> snippets, CC BY-SA 4.0); split by package, decontaminated "
            f"against every held-out benchmark ({removed} pairs removed). Pairs by licence:\n\n{licences}\n\n"
            "Attribution: NOTICE beside this card.")


def head_entry(params: Params, name: str, folder: Path, gates: dict[str, Any]):
    """The bundle entry of one exported head: its spec.json, with the export report's
    `champion`, `heldout` and `sizes_bytes` as metrics, and its model card."""
    from apex_models.export.bundle import BundleEntry, head_model_card
    from apex_models.export.heads import HEADS
    from apex_models.runtime.bundle import parse_model_spec

    spec = parse_model_spec((folder / "spec.json").read_text())
    spec = spec.model_copy(update={"metrics": {k: gates.get(k) for k in ("champion", "heldout", "sizes_bytes")}})
    card = head_model_card(name, spec, params.profile, **HEADS[name].card(params, layout(params).results))
    return BundleEntry(folder, spec, card)


def _head_entries(params: Params, export_root: Path) -> dict[str, Any]:
    """Bundle entries of every head the export stage wrote (those without a champion are skipped)."""
    report_path = layout(params).results / "export-heads.json"
    report = json.loads(report_path.read_text())["results"] if report_path.is_file() else {}
    return {name: head_entry(params, name, export_root / name, report.get(name, {}))
            for name in params.export.heads if (export_root / name / "spec.json").is_file()}


def _sensitivity_entry(params: Params) -> dict[str, Any]:
    """The sensitivity tagger, when its evaluate stage promoted the candidate it evaluated.

    That stage evaluates the exported ONNX folder and then decides, so the folder is the
    champion exactly when the decision promoted it; otherwise the bundle ships without it
    (as for a head without a champion) and the log says why.
    """
    import logging

    from apex_models.export.bundle import BundleEntry, head_model_card
    from apex_models.export.sensitivity import bundle_spec
    from apex_models.sensitivity.classifier import MANIFEST
    from apex_models.training.sensitivity import sensitivity_paths

    if params.sensitivity is None:
        return {}
    paths = sensitivity_paths(params)
    result = paths.results / "sensitivity.json"
    if not result.is_file() or not (paths.export / MANIFEST).is_file():
        return {}
    results = json.loads(result.read_text())["results"]
    promotion = results.get("promotion", {})
    if not promotion.get("promoted"):
        logging.getLogger(__name__).warning("bundle: the sensitivity model is not shipped (%s)",
                                            promotion.get("reason", "not promoted"))
        return {}
    train = json.loads((paths.model / "train_summary.json").read_text())
    spec = bundle_spec(paths.export, params.sensitivity.base,
                       {"version": promotion["candidate_version"], "run_id": train.get("mlflow_run_id")})
    spec = spec.model_copy(update={"metrics": {"synthetic_test": results.get("synthetic_test", {}).get("combined")}})
    card = head_model_card(
        "sensitivity", spec, params.profile,
        training=(f"- **Training**: LoRA r={params.sensitivity.lora.r} token classification (BIO tags), "
                  f"threshold {spec.threshold} tuned on dev.\n"),
        data=("Real code and prose windows with generated secrets, personal data and look-alike non-secrets "
              "injected at known spans (data/datasets/sensitivity, its card lists sources and licences)."),
        evaluation="See eval/results/sensitivity.json: span precision/recall/F1 on synthetic test and CredSweeper.",
        intended_use="Deciding, with the rule detectors, which memories must stay on the machine (hybrid runtime).",
        limitations="Trained on synthetic secrets in real context; the rule detectors stay on beside it.")
    return {"sensitivity": BundleEntry(paths.export, spec, card)}


def embedder_entry(params: Params):
    """The bundle entry of the exported embedder (the export stage's champion), with its
    evaluation, export gates and model card."""
    from apex_models.evaluation.stages import markdown_table
    from apex_models.export.bundle import BundleEntry, model_card
    from apex_models.runtime.bundle import parse_model_spec

    lay = layout(params)
    src = lay.export_embedder
    spec = parse_model_spec((src / "spec.json").read_text())
    export_report = json.loads((lay.results / "export-embedder.json").read_text())["results"]
    train = json.loads((lay.embedder_model / "train_summary.json").read_text())
    evaluation = json.loads((lay.results / "embedder.json").read_text())["results"]
    data_report = json.loads((lay.embedder_data / "report.json").read_text())
    champion = export_report["champion"]
    spec = spec.model_copy(update={"metrics": {"eval": evaluation, "champion": champion,
                                               "export_dev_mrr@10": export_report["dev_mrr@10"],
                                               "sizes_bytes": export_report["sizes_bytes"]}})
    card = model_card(spec, params.profile, training=_training_lines(params, train, champion),
                      data=("The shipped weights are the base model's own; the rejected candidate was trained on "
                            if champion.get("kind") == "base" else "") + _data_lines(data_report),
                      evaluation=markdown_table(evaluation))
    notice = lay.embedder_data / "NOTICE"
    return BundleEntry(src, spec, card, notice.read_text() if notice.is_file() else "")


def run_bundle(params: Params) -> Path:
    """Assemble the bundle from the export stage's artifacts, with metrics and provenance."""
    from apex_models.export.bundle import assemble_bundle

    lay = layout(params)
    src = lay.export_embedder
    commit = git_commit()
    with stage_run("bundle", params, ["paths"], data={"export/embedder": src}) as mlflow:
        entries = {"embedder": embedder_entry(params)}
        entries.update(_head_entries(params, src.parent))
        entries.update(_sensitivity_entry(params))
        manifest = assemble_bundle(
            lay.bundle, entries, profile=params.profile,
            bundle_version=f"{__version__}+{params.profile}.{commit[:12]}", git_commit=commit,
            data_hashes=data_hashes({"datasets/embedder": lay.embedder_data, "ingest/code": lay.code_files}))
        if params.export.signing_key:
            from apex_models.export.signing import sign_bundle

            sign_bundle(lay.bundle, Path(params.export.signing_key))
        mlflow.log_artifact(str(lay.bundle / "manifest.json"))
        mlflow.set_tag("bundle_version", manifest.bundle_version)
    return lay.bundle
