"""Recipe: the intent classifier (MiniLM + classification head, LoRA) and its TF-IDF baseline.

The steps, in order (state is set up in one place, `_setup`):
  1. seed; build (or reuse) the weak-label dataset; read it;
  2. the baseline: TF-IDF (word 1-2 grams + char 3-5 grams) + logistic regression on the
     same weak data, so the model has to beat a cheap system trained on the same labels;
  3. the model: AutoModelForSequenceClassification from the packaged MiniLM, LoRA on the
     encoder, the pooler and head trained in full (they start from no task knowledge);
  4. train with label-smoothed cross-entropy (weak labels are noisy); every `save_every`
     steps a resumable checkpoint; every `eval_every` steps macro-F1 on gold dev keeps the
     best adapter, and `patience` evaluations without gain stop the run early;
  5. merge the best adapter; tune the out_of_scope threshold of model and baseline on
     gold dev only (never test).

Batches are a pure function of (seed, step), so a resumed run sees exactly the batches
of an uninterrupted one: the resume test checks the losses match.
"""

from __future__ import annotations

import json
import pickle
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from apex_models.config import IntentConfig, Params
from apex_models.data.task_data import read_split, split_files
from apex_models.models.base import resolve_base_model
from apex_models.training.common import (CHECKPOINTS, batch_for_step, fingerprint, optimizer_step, prepare_training,
                                         record_dev, record_step, resume, save_checkpoint, save_selected, with_lora)
from apex_models.training.seed import set_seed


@dataclass(frozen=True)
class IntentPaths:
    data: Path      # weak-label dataset (DatasetDict with a train split, report.json, README.md)
    model: Path     # merged/, adapter/, baseline.pkl, thresholds.json, metrics
    results: Path   # eval/results


def intent_paths(params: Params) -> IntentPaths:
    return IntentPaths(data=Path(params.paths.data) / "datasets" / "intent",
                       model=Path(params.paths.models) / "intent", results=Path(params.paths.results))


def read_examples(path: Path, labels: list[str]) -> tuple[list[str], list[int]]:
    """Texts and label ids of a dataset split folder (``<intent dataset>/train``)."""
    rows = read_split(path)
    texts = [row["text"] for row in rows]
    ys = [labels.index(row["label"]) for row in rows]
    if not texts:
        raise ValueError(f"{path} holds no examples")
    return texts, ys


def train_baseline(texts: list[str], labels: list[str], cfg: IntentConfig, seed: int):
    """TF-IDF word 1-2 grams + char 3-5 grams, then multinomial logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    features = make_union(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, lowercase=True),
                          TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), sublinear_tf=True, min_df=2))
    model = make_pipeline(features, LogisticRegression(C=cfg.baseline.C, max_iter=cfg.baseline.max_iter,
                                                       random_state=seed))
    return model.fit(texts, labels)


def _model(cfg: IntentConfig, trainer_cfg):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_base_model(cfg.base)
    labels = cfg.label_names
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={k: i for i, k in enumerate(labels)})
    model = with_lora(model, cfg.lora, trainer_cfg, modules_to_save=("classifier", "pooler"))
    return model, tokenizer


@torch.inference_mode()
def predict_proba(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=max_length,
                          return_tensors="pt").to(device)
        out.append(torch.softmax(model(**batch).logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(out)


def _dev_macro_f1(model, tokenizer, dev: list[dict], cfg: IntentConfig) -> float:
    from apex_models.evaluation.intent import classification_metrics

    labels = cfg.label_names
    probs = predict_proba(model, tokenizer, [r["text"] for r in dev], cfg.max_length)
    preds = [labels[i] for i in probs.argmax(1)]
    return classification_metrics([r["label"] for r in dev], preds, labels, cfg.oos_label)["macro_f1"]


def train_intent(params: Params, train_path: Path, dev: list[dict] | None, out_dir: Path, mlflow=None,
                 stop_after: int | None = None) -> dict[str, Any]:
    """Train baseline and model; resume from the newest checkpoint in `out_dir` if any.

    `dev` is gold dev rows (selection, early stopping, thresholds) or None (the last step
    ships, threshold 0). `stop_after` ends the loop after that many total steps, as a
    crash would, leaving checkpoints; the resume test uses it.
    """
    from apex_models.evaluation.intent import tune_threshold

    cfg, train = params.intent, params.intent.train
    if params.trainer.num_threads:
        torch.set_num_threads(params.trainer.num_threads)
    set_seed(params.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = cfg.label_names

    # 1-2. data and the baseline (seconds; refit on resume rather than checkpointed)
    texts, ys = read_examples(train_path, labels)
    started = time.perf_counter()
    baseline = train_baseline(texts, [labels[y] for y in ys], cfg, params.seed)
    baseline_seconds = round(time.perf_counter() - started, 1)

    # 3. model, optimizer, schedule, accelerator
    model, tokenizer = _model(cfg, params.trainer)
    model, optimizer, scheduler, accelerator, counts = prepare_training(
        model, train, params.trainer, train.batch_size)

    run_fp = fingerprint({"seed": params.seed, "intent": cfg.model_dump(mode="json"),
                          "trainer": params.trainer.model_dump(mode="json")}, split_files(train_path))
    state, extra, _ = resume(accelerator, out_dir, run_fp, {"bad_evals": 0})
    summary: dict[str, Any] = {**counts, "examples": len(texts),
                               "baseline_seconds": baseline_seconds}

    # 4. train
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=train.label_smoothing)
    last = min(train.max_steps, stop_after) if stop_after else train.max_steps
    bar = tqdm(total=train.max_steps, initial=state.step, desc="train intent", unit="step",
               disable=not accelerator.is_local_main_process)
    started = time.perf_counter()
    early = False
    model.train()
    while state.step < last and not early:
        idx = batch_for_step(len(texts), train.batch_size, params.seed, state.step)
        batch = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=cfg.max_length,
                          return_tensors="pt").to(accelerator.device)
        target = torch.tensor([ys[i] for i in idx], device=accelerator.device)
        with accelerator.accumulate(model):
            loss = loss_fn(model(**batch).logits.float(), target)
            optimizer_step(accelerator, loss, optimizer, scheduler)
        record_step(state, loss, bar, scheduler, mlflow, train.log_every)
        if dev and (state.step % train.eval_every == 0 or state.step == train.max_steps):
            metric = _dev_macro_f1(accelerator.unwrap_model(model), tokenizer, dev, cfg)
            model.train()
            early = record_dev(state, extra, metric, "macro_f1", model, out_dir, train.patience, accelerator, mlflow)
        if state.step % train.save_every == 0 or state.step == last or early:
            save_checkpoint(accelerator, out_dir, state, extra)
    bar.close()
    summary.update(seconds=round(time.perf_counter() - started, 1), losses=state.losses, dev=state.dev,
                   best_step=state.best_step, early_stopped=early,
                   best_dev_macro_f1=state.best_metric if state.best_step >= 0 else None)
    if state.step < train.max_steps and not early:
        summary["stopped_at"] = state.step
        return summary

    # 5. the selected adapter, merged; thresholds on dev
    merged = save_selected(accelerator, model, tokenizer, out_dir, state)
    with open(out_dir / "baseline.pkl", "wb") as fh:
        pickle.dump(baseline, fh)
    thresholds = {"model": 0.0, "baseline": 0.0}
    if dev:
        from apex_models.evaluation.intent import _baseline_proba

        truth = [r["label"] for r in dev]
        dev_texts = [r["text"] for r in dev]
        thresholds["model"], _ = tune_threshold(predict_proba(merged, tokenizer, dev_texts, cfg.max_length),
                                                truth, labels, cfg.oos_label)
        thresholds["baseline"], _ = tune_threshold(_baseline_proba(baseline, dev_texts, labels), truth, labels,
                                                   cfg.oos_label)
    (out_dir / "thresholds.json").write_text(json.dumps(thresholds, indent=2) + "\n")
    summary["thresholds"] = thresholds
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    shutil.rmtree(out_dir / "best_adapter", ignore_errors=True)
    return summary


def run_train_intent(params: Params) -> dict[str, Any]:
    """The train_intent stage: weak dataset, baseline and model in one MLflow run."""
    from apex_models.data.intent_weak import build_intent_dataset
    from apex_models.evaluation.intent import load_gold
    from apex_models.tracking import stage_run

    cfg = params.intent
    if cfg is None:
        raise ValueError("params has no `intent` section: re-run pipelines/compose.py")
    paths = intent_paths(params)
    shared = Path(params.paths.shared)
    report = build_intent_dataset(shared, paths.data, cfg.weak, cfg.label_names, params.seed)
    gold = shared / "benchmarks" / "intent" / "gold.jsonl"
    dev = load_gold(shared, "dev") if gold.is_file() else None
    with stage_run("train_intent", params, ["intent", "trainer"], data={"datasets/intent": paths.data}) as mlflow:
        mlflow.log_dict(report, "data/report.json")
        summary = train_intent(params, paths.data / "train", dev, paths.model, mlflow=mlflow)
        summary["mlflow_run_id"] = mlflow.active_run().info.run_id
        for key in ("trainable_params", "examples", "seconds", "best_step"):
            mlflow.log_metric(f"summary/{key}", float(summary[key]))
        mlflow.log_artifacts(str(paths.model / "adapter"), "adapter")
    (paths.model / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    metrics = {k: summary.get(k) for k in ("examples", "trainable_params", "seconds", "best_step",
                                           "best_dev_macro_f1", "early_stopped", "thresholds")}
    metrics["final_loss"] = summary["losses"][-1][1]
    (paths.model / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return summary
