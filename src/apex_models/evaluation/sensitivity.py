"""Evaluate the sensitivity classifier as it ships (ONNX, through the runtime class), then promote.

Three systems, scored the same way: the rule detectors alone, the model alone, and their
union (what :meth:`SensitivityClassifier.classify` returns).

- **CredSweeper samples** (held out, never trained on): line- and value-level
  precision/recall of secret spans (:mod:`apex_models.evaluation.secrets`), beside
  CredSweeper's own unfiltered candidates as a rule-only reference. The labels are the
  maintainers' expectations, and the output says so.
- **Synthetic test split** (our own held-out data, contexts from files never seen in
  training): value-level P/R/F1 per span type, document-label accuracy, and the
  false-positive rate on injected look-alikes (hashes, UUIDs, fixtures, placeholders).

Promotion: the candidate is registered in the MLflow registry; it is rejected outright
unless the union beats the detectors alone on synthetic-test secret F1 by the margin (a
model that adds nothing to the rules does not ship), and otherwise `champion` moves
only if it beats the current champion by the margin.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from apex_models.evaluation import secrets
from apex_models.sensitivity.spans import SensitiveSpan, doc_label, span_scores, union

SYSTEMS = ("detectors", "model", "combined")
PROMOTION_METRIC = "synthetic_test/combined_secret_f1"


def _system_spans(clf, text: str) -> dict[str, list[SensitiveSpan]]:
    from apex_models.sensitivity.classifier import detector_spans

    rules, model = detector_spans(text), clf.model_spans(text)
    return {"detectors": rules, "model": model, "combined": union(rules + model)}


def lookalike_fp_rate(rows: list[dict], predicted: list[list[SensitiveSpan]]) -> dict[str, Any]:
    """Share of injected look-alike values that a SECRET span overlaps."""
    total = hit = 0
    for row, spans in zip(rows, predicted):
        for a, b in row.get("lookalikes", []):
            total += 1
            hit += any(s.kind == "SECRET" and s.start < b and a < s.end for s in spans)
    return {"false_positive_rate": round(hit / total, 4) if total else None, "flagged": hit, "lookalikes": total}


def evaluate_synthetic(clf, rows: list[dict]) -> dict[str, Any]:
    per_system: dict[str, list[list[SensitiveSpan]]] = {k: [] for k in SYSTEMS}
    for row in tqdm(rows, desc="synthetic test", unit="doc"):
        for k, v in _system_spans(clf, row["text"]).items():
            per_system[k].append(v)
    out: dict[str, Any] = {"documents": len(rows), "doc_labels": dict(Counter(r["label"] for r in rows))}
    for k in SYSTEMS:
        labels = [doc_label(spans) for spans in per_system[k]]
        out[k] = {"spans": span_scores(rows, per_system[k]),
                  "doc_label_accuracy": round(sum(p == r["label"] for p, r in zip(labels, rows)) / len(rows), 4),
                  "lookalikes": lookalike_fp_rate(rows, per_system[k])}
    return out


def evaluate_benchmark(clf, shared: Path) -> dict[str, Any]:
    """Secret spans of each system on the CredSweeper samples (PII spans are not in its labels)."""
    root = secrets.benchmark_root(shared)
    texts = secrets.sample_texts(root)
    expected = secrets.load_findings(root / "expected_ml.json")
    preds: dict[str, dict[str, list]] = {k: {} for k in SYSTEMS}
    started = time.perf_counter()
    for name, text in tqdm(texts.items(), desc="CredSweeper samples", unit="file"):
        starts = secrets.line_starts(text)
        for k, spans in _system_spans(clf, text).items():
            preds[k][name] = secrets.to_line_spans(text, [(s.start, s.end) for s in spans if s.kind == "SECRET"],
                                                   starts)
    seconds = time.perf_counter() - started
    out: dict[str, Any] = {"labels": secrets.LABELS_NOTE, "files": len(texts),
                           "chars": sum(len(t) for t in texts.values()), "seconds_all_systems": round(seconds, 1)}
    for k in SYSTEMS:
        out[k] = secrets.score(preds[k], expected, texts)
    halves = {h: [n for n in texts if secrets.half_of(n) == h] for h in ("dev", "test")}
    out["halves"] = {"note": "dev: the half of the files whose errors may be read when tuning; test: never read",
                     **{h: {"files": len(names), **{k: secrets.score(preds[k], expected, names) for k in SYSTEMS}}
                        for h, names in halves.items()}}
    out["credsweeper_candidates_unfiltered"] = secrets.score(
        secrets.load_findings(root / "candidates_no_filters.json"), expected, texts)
    dev_expected = {n: v for n, v in expected.items() if secrets.half_of(n) == "dev"}
    out["combined_missed_values_by_dev_file_top"] = dict(list(secrets.misses(preds["combined"], dev_expected).items())[:15])
    return out


def promote_sensitivity(params, synthetic: dict[str, Any], train_run_id: str) -> dict[str, Any]:
    """Register the candidate; reject it unless it beats the rules, else let `decide` move `champion`."""
    from apex_models.training.promotion import decide, register_version, reject

    cfg = params.sensitivity.eval
    import mlflow

    client = mlflow.MlflowClient()
    combined = synthetic["combined"]["spans"]["secret"]["f1"]
    rules = synthetic["detectors"]["spans"]["secret"]["f1"]
    run = client.get_run(train_run_id)
    candidate = register_version(client, cfg.registered_model, f"{run.info.artifact_uri}/merged_model",
                                 run.info.run_id, PROMOTION_METRIC, combined, tags={"kind": "fine-tuned"})
    if not combined > rules + cfg.margin:
        decision = reject(client, cfg.registered_model, candidate, PROMOTION_METRIC, cfg.margin,
                          f"detectors + model secret F1 {combined:.4f} does not beat the detectors alone "
                          f"({rules:.4f}) by the margin {cfg.margin}")
    else:
        decision = decide(client, cfg.registered_model, candidate, PROMOTION_METRIC, cfg.margin)
    return decision.to_json()


def run_evaluate_sensitivity(params) -> dict[str, Any]:
    """The evaluate_sensitivity stage: eval/results/sensitivity.json and the registry decision."""
    from apex_models.data.sensitivity_dataset import read_examples
    from apex_models.evaluation.results import write_result
    from apex_models.layout import layout
    from apex_models.sensitivity.classifier import SensitivityClassifier
    from apex_models.tracking import stage_run
    from apex_models.training.sensitivity import require_config, sensitivity_paths

    cfg = require_config(params)
    paths = sensitivity_paths(params)
    clf = SensitivityClassifier.load(paths.export, precision=cfg.eval.precision,
                                     threads=params.runtime.intra_op_threads)
    rows = read_examples(paths.data / "test")
    train = json.loads((paths.model / "train_summary.json").read_text())
    with stage_run("evaluate_sensitivity", params, ["sensitivity"],
                   data={"datasets/sensitivity": paths.data, "onnx/sensitivity": paths.export}) as mlflow:
        results: dict[str, Any] = {"precision": clf.precision, "threshold": clf.threshold,
                                   "synthetic_test": evaluate_synthetic(clf, rows)}
        shared = layout(params).shared_or_none()
        if shared is not None and (shared / "benchmarks" / "secrets").is_dir():
            results["credsweeper"] = evaluate_benchmark(clf, shared)
        for system in SYSTEMS:
            syn = results["synthetic_test"][system]
            mlflow.log_metric(f"synthetic_test/{system}_secret_f1", syn["spans"]["secret"]["f1"])
            mlflow.log_metric(f"synthetic_test/{system}_lookalike_fpr", syn["lookalikes"]["false_positive_rate"] or 0)
            if "credsweeper" in results:
                for level in ("line", "value"):
                    for m in ("precision", "recall"):
                        mlflow.log_metric(f"credsweeper/{system}_{level}_{m}", results["credsweeper"][system][level][m])
        results["promotion"] = promote_sensitivity(params, results["synthetic_test"], train["mlflow_run_id"])
        results["training"] = {k: train.get(k) for k in ("examples", "seconds", "best_step", "best_dev_span_f1",
                                                         "trainable_params", "total_params")}
        mlflow.log_dict(results, "sensitivity.json")
    write_result(paths.results / "sensitivity.json", "sensitivity classifier (detectors, model, combined)",
                 results, command="dvc repro evaluate_sensitivity", extra={"profile": params.profile})
    return {"synthetic_combined_secret_f1": results["synthetic_test"]["combined"]["spans"]["secret"]["f1"],
            "promoted": results["promotion"]["promoted"]}
