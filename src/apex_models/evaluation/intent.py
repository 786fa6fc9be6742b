"""Intent classification metrics on the gold set, and the evaluate_intent stage.

The gold rules (shared/benchmarks/intent/README.md): dev tunes (model selection, the
out_of_scope threshold), test reports. Besides accuracy and macro-F1 we report the same
on the real subset (source != "written", since some labels are almost all written text)
and accuracy without the doubtful ids, for the baseline and the model alike.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from apex_models.config import Params

log = logging.getLogger(__name__)


def gold_dir(shared_dir: Path) -> Path:
    return Path(shared_dir) / "benchmarks" / "intent"


def load_gold(shared_dir: Path, split: str | None = None) -> list[dict]:
    """Rows of gold.jsonl (id, text, label, source, split), optionally one split only."""
    rows = [json.loads(line) for line in (gold_dir(shared_dir) / "gold.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    return [r for r in rows if split is None or r["split"] == split]


def load_doubtful(shared_dir: Path) -> set[str]:
    path = gold_dir(shared_dir) / "doubtful.tsv"
    if not path.is_file():
        return set()
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return {line.split("\t", 1)[0] for line in lines if line.strip()}


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], labels: Sequence[str],
                           oos_label: str) -> dict[str, Any]:
    """Accuracy, macro-F1 over `labels`, per-class precision/recall/F1, out_of_scope recall."""
    n = len(y_true)
    per_class: dict[str, dict[str, float]] = {}
    for label in labels:
        tp = sum(1 for t, p in zip(y_true, y_pred) if t == label and p == label)
        fp = sum(1 for t, p in zip(y_true, y_pred) if t != label and p == label)
        fn = sum(1 for t, p in zip(y_true, y_pred) if t == label and p != label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
                            "support": tp + fn}
    present = [lab for lab in labels if per_class[lab]["support"] > 0]
    macro = float(np.mean([per_class[lab]["f1"] for lab in present])) if present else 0.0
    accuracy = sum(1 for t, p in zip(y_true, y_pred) if t == p) / n if n else 0.0
    return {"n": n, "accuracy": round(accuracy, 4), "macro_f1": round(macro, 4),
            "oos_recall": per_class.get(oos_label, {}).get("recall"), "per_class": per_class}


def predict_labels(probs: np.ndarray, labels: Sequence[str], oos_label: str, threshold: float) -> list[str]:
    """Argmax, except out_of_scope when the best in-scope probability is under `threshold`.

    Why: weak training data covers out-of-scope text thinly; an uncertain query is safer
    routed to "not a developer request" than to a wrong tool.
    """
    oos = list(labels).index(oos_label)
    in_scope = probs.copy()
    in_scope[:, oos] = -1.0
    out = []
    for row, masked in zip(probs, in_scope):
        best = int(np.argmax(row))
        out.append(oos_label if best == oos or masked.max() < threshold else labels[best])
    return out


def tune_threshold(probs: np.ndarray, y_true: Sequence[str], labels: Sequence[str], oos_label: str,
                   grid: Sequence[float] = tuple(np.round(np.arange(0.0, 0.951, 0.05), 2))) -> tuple[float, float]:
    """The threshold with the best macro-F1 on the given (dev) rows; ties keep the lowest."""
    best_t, best_f1 = 0.0, -1.0
    for t in grid:
        f1 = classification_metrics(y_true, predict_labels(probs, labels, oos_label, float(t)), labels,
                                    oos_label)["macro_f1"]
        if f1 > best_f1 + 1e-9:
            best_t, best_f1 = float(t), f1
    return best_t, best_f1


def gold_report(rows: list[dict], preds: list[str], doubtful: set[str], labels: Sequence[str],
                oos_label: str) -> dict[str, Any]:
    """All rows, the real subset, and accuracy without the doubtful ids."""
    truth = [r["label"] for r in rows]
    real = [i for i, r in enumerate(rows) if r["source"] != "written"]
    sure = [i for i, r in enumerate(rows) if r["id"] not in doubtful]
    report = classification_metrics(truth, preds, labels, oos_label)
    report["real"] = classification_metrics([truth[i] for i in real], [preds[i] for i in real], labels, oos_label)
    report["real"].pop("per_class")
    report["accuracy_without_doubtful"] = round(
        sum(1 for i in sure if truth[i] == preds[i]) / len(sure), 4) if sure else None
    report["n_without_doubtful"] = len(sure)
    return report


class TorchIntentClassifier:
    """The merged classifier folder: texts -> class probabilities (in the config's label order)."""

    def __init__(self, folder: Path, max_length: int, batch_size: int = 64):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
        self.max_length, self.batch_size, self._torch = max_length, batch_size, torch

    def predict_proba(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                out.append(torch.softmax(self.model(**batch).logits.float(), dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, self.model.config.num_labels))


def run_evaluate_intent(params: Params) -> dict[str, Any]:
    """Baseline, model and the majority class on gold dev and test; writes eval/results/intent.json."""
    from apex_models.data.task_data import read_split
    from apex_models.evaluation.commands import reproduce_command
    from apex_models.evaluation.results import write_result
    from apex_models.tracking import stage_run
    from apex_models.training.intent import intent_paths

    cfg = params.intent
    if cfg is None:
        raise ValueError("params has no `intent` section: re-run pipelines/compose.py")
    paths = intent_paths(params)
    labels, oos = cfg.label_names, cfg.oos_label
    shared = Path(params.paths.shared)
    doubtful = load_doubtful(shared)
    splits = {s: load_gold(shared, s) for s in ("dev", "test")}
    thresholds = json.loads((paths.model / "thresholds.json").read_text())
    with open(paths.model / "baseline.pkl", "rb") as fh:
        baseline = pickle.load(fh)  # written by our own train stage, never an outside file
    model = TorchIntentClassifier(paths.model / "merged", cfg.max_length)
    train_counts = Counter(row["label"] for row in read_split(paths.data / "train"))
    majority = train_counts.most_common(1)[0][0]
    results: dict[str, Any] = {}
    with stage_run("evaluate_intent", params, ["intent"], data={"datasets/intent": paths.data}) as mlflow:
        for split, rows in splits.items():
            texts = [r["text"] for r in rows]
            systems = {
                "majority_class": [majority] * len(rows),
                "baseline_tfidf_lr": predict_labels(_baseline_proba(baseline, texts, labels), labels, oos,
                                                    thresholds["baseline"]),
                "minilm_lora": predict_labels(model.predict_proba(texts), labels, oos, thresholds["model"]),
            }
            results[split] = {name: gold_report(rows, preds, doubtful, labels, oos) for name, preds in systems.items()}
            for name, rep in results[split].items():
                mlflow.log_metrics({f"{split}/{name}/accuracy": rep["accuracy"], f"{split}/{name}/macro_f1": rep["macro_f1"],
                                    f"{split}/{name}/real_macro_f1": rep["real"]["macro_f1"]})
        write_result(paths.results / "intent.json", "intent classifier (gold intent set)", results,
                     command=reproduce_command(params, ["train_intent", "evaluate_intent"]),
                     extra={"profile": params.profile, "thresholds": thresholds,
                            "note": "dev tunes (selection, out_of_scope threshold); test is the report",
                            "eval_run_id": mlflow.active_run().info.run_id})
        promotion = _promote(params, mlflow, paths.model / "merged", results, thresholds)
    write_result(paths.results / "promotion-intent.json", "intent promotion", promotion,
                 command=reproduce_command(params, ["train_intent", "evaluate_intent"]),
                 extra={"profile": params.profile})
    return {f"{s}/{n}/macro_f1": r["macro_f1"] for s, v in results.items() for n, r in v.items()}


def _promote(params: Params, mlflow, merged: Path, results: dict[str, Any], thresholds: dict[str, float]):
    """Register the classifier; `champion` only if its dev macro-F1 beats TF-IDF's (dev, never test)."""
    from apex_models.training.promotion import promote_over_baseline

    cfg = params.intent
    mlflow.log_artifacts(str(merged), "merged_model")  # what the registry version points at
    run_id = mlflow.active_run().info.run_id
    return promote_over_baseline(
        mlflow.MlflowClient(), cfg.registered_model, f"{mlflow.get_artifact_uri()}/merged_model", run_id,
        "dev_macro_f1", results["dev"]["minilm_lora"]["macro_f1"], "baseline_tfidf_lr",
        results["dev"]["baseline_tfidf_lr"]["macro_f1"], cfg.promotion_margin,
        tags={"threshold": f"{thresholds['model']:.6f}"})


def _baseline_proba(baseline, texts: list[str], labels: Sequence[str]) -> np.ndarray:
    """The pipeline's probabilities re-ordered to the config's label order."""
    probs = baseline.predict_proba(texts)
    order = [list(baseline.classes_).index(lab) if lab in baseline.classes_ else -1 for lab in labels]
    out = np.zeros((len(texts), len(labels)))
    for j, k in enumerate(order):
        if k >= 0:
            out[:, j] = probs[:, k]
    return out
