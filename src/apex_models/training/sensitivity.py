"""Recipe: the sensitivity token classifier (MiniLM + token-classification head, LoRA).

The steps, in order:
  1. seed; read the synthetic dataset (data/datasets/sensitivity, built by its own stage);
  2. tokenise with character offsets and label tokens BIO from the injected spans
     (:func:`apex_models.sensitivity.spans.bio_labels`, the alignment the runtime shares);
  3. AutoModelForTokenClassification from the packaged MiniLM, LoRA on the encoder, the
     head trained in full;
  4. weighted cross-entropy (span tokens are rare against O); every `save_every` steps a
     resumable checkpoint; every `eval_every` steps span F1 on the synthetic dev split
     keeps the best adapter, and `patience` evaluations without gain stop early;
  5. merge the best adapter; tune the span-probability threshold on dev for the union
     of detectors and model (the system that ships), never on the benchmark.

Batches are a pure function of (seed, step), so a resumed run sees exactly the batches
of an uninterrupted one: the resume test checks the losses match.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from apex_models.config import Params, SensitivityConfig
from apex_models.models.base import resolve_base_model
from apex_models.sensitivity.spans import (IGNORE, SensitiveSpan, bio_labels, span_scores, spans_from_probs,
                                           union, windows)
from apex_models.sensitivity.synth import TOKEN_LABELS
from apex_models.training.common import (CHECKPOINTS, batch_for_step, fingerprint, optimizer_step, prepare_training,
                                         record_dev, record_step, resume, save_checkpoint, save_selected, with_lora)
from apex_models.training.seed import set_seed


@dataclass(frozen=True)
class SensitivityPaths:
    data: Path      # DatasetDict train/dev/test, report.json
    model: Path     # merged/, adapter/, threshold.json, train_summary.json, metrics.json
    export: Path    # ONNX fp32/int8, tokenizer.json, sensitivity.json
    results: Path


def sensitivity_paths(params: Params) -> SensitivityPaths:
    return SensitivityPaths(data=Path(params.paths.data) / "datasets" / "sensitivity",
                            model=Path(params.paths.models) / "sensitivity",
                            export=Path(params.paths.export) / "sensitivity", results=Path(params.paths.results))


def require_config(params: Params) -> SensitivityConfig:
    if params.sensitivity is None:
        raise ValueError("params has no `sensitivity` section: re-run pipelines/compose.py")
    return params.sensitivity


def encode(tokenizer, rows: list[dict], max_length: int) -> list[dict[str, list[int]]]:
    """Token ids and BIO label ids per row (truncated to `max_length` with special tokens)."""
    out = []
    for row in rows:
        enc = tokenizer(row["text"], truncation=True, max_length=max_length, return_offsets_mapping=True,
                        return_special_tokens_mask=True)
        labels = bio_labels(enc["offset_mapping"], row["spans"], [bool(x) for x in enc["special_tokens_mask"]])
        out.append({"input_ids": enc["input_ids"], "labels": labels})
    return out


def collate(items: list[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(x["input_ids"]) for x in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for i, x in enumerate(items):
        n = len(x["input_ids"])
        ids[i, :n] = torch.tensor(x["input_ids"])
        mask[i, :n] = 1
        labels[i, :n] = torch.tensor(x["labels"])
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _model(cfg: SensitivityConfig, trainer_cfg):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    path = resolve_base_model(cfg.base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=len(TOKEN_LABELS), id2label=dict(enumerate(TOKEN_LABELS)),
        label2id={k: i for i, k in enumerate(TOKEN_LABELS)})
    model = with_lora(model, cfg.lora, trainer_cfg, modules_to_save=("classifier",))
    return model, tokenizer


@torch.inference_mode()
def token_probs(model, tokenizer, texts: list[str], max_length: int, stride: int,
                batch_size: int = 32) -> list[tuple[list[tuple[int, int]], np.ndarray]]:
    """Per text: (char offsets, [n_tokens, n_labels] probabilities), windowed exactly as the
    ONNX runtime does (:class:`apex_models.sensitivity.classifier.SensitivityClassifier`)."""
    model.eval()
    device = next(model.parameters()).device
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    encoded = [tokenizer(t, add_special_tokens=False, return_offsets_mapping=True) for t in texts]
    jobs = [(i, s, e) for i, enc in enumerate(encoded)
            for s, e in windows(len(enc["input_ids"]), max_length - 2, stride) if e > s]
    totals = [np.zeros((len(enc["input_ids"]), len(TOKEN_LABELS))) for enc in encoded]
    counts = [np.zeros((len(enc["input_ids"]), 1)) for enc in encoded]
    for b in range(0, len(jobs), batch_size):
        chunk = jobs[b:b + batch_size]
        width = max(e - s for _, s, e in chunk) + 2
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, (i, s, e) in enumerate(chunk):
            ids[row, :e - s + 2] = torch.tensor([cls_id, *encoded[i]["input_ids"][s:e], sep_id])
            mask[row, :e - s + 2] = 1
        probs = torch.softmax(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), -1)
        probs = probs.cpu().numpy()
        for row, (i, s, e) in enumerate(chunk):
            totals[i][s:e] += probs[row, 1:e - s + 1]
            counts[i][s:e] += 1
    return [([tuple(o) for o in enc["offset_mapping"]], t / np.maximum(c, 1))
            for enc, t, c in zip(encoded, totals, counts)]


def system_spans(rows: list[dict], probs, threshold: float, detectors: list[list[SensitiveSpan]] | None,
                 ) -> list[list[SensitiveSpan]]:
    """Model spans at `threshold` per row, unioned with the detectors' spans when given."""
    out = []
    for k, (row, (offsets, p)) in enumerate(zip(rows, probs)):
        spans = spans_from_probs(offsets, p, threshold, row["text"]) if len(offsets) else []
        out.append(union(spans + detectors[k]) if detectors is not None else spans)
    return out


def train_sensitivity(params: Params, data_dir: Path, out_dir: Path, mlflow=None,
                      stop_after: int | None = None) -> dict[str, Any]:
    """Train, select on dev, tune the threshold; resume from the newest checkpoint in `out_dir`.

    `stop_after` ends the loop after that many total steps, as a crash would, leaving
    checkpoints; the resume test uses it.
    """
    from apex_models.data.sensitivity_dataset import read_examples
    from apex_models.data.task_data import split_files
    from apex_models.sensitivity.classifier import detector_spans

    cfg = require_config(params)
    train = cfg.train
    if params.trainer.num_threads:
        torch.set_num_threads(params.trainer.num_threads)
    set_seed(params.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_examples(data_dir / "train")
    dev = read_examples(data_dir / "dev")

    model, tokenizer = _model(cfg, params.trainer)
    examples = encode(tokenizer, rows, cfg.max_length)
    model, optimizer, scheduler, accelerator, counts = prepare_training(model, train, params.trainer,
                                                                        train.batch_size)
    run_fp = fingerprint({"seed": params.seed, "sensitivity": cfg.model_dump(mode="json"),
                          "trainer": params.trainer.model_dump(mode="json")}, split_files(data_dir / "train"))
    state, extra, _ = resume(accelerator, out_dir, run_fp, {"bad_evals": 0})
    summary: dict[str, Any] = {**counts, "examples": len(rows), "dev_examples": len(dev)}

    weights = torch.tensor([1.0] + [train.secret_weight] * (len(TOKEN_LABELS) - 1), device=accelerator.device)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, ignore_index=IGNORE)
    last = min(train.max_steps, stop_after) if stop_after else train.max_steps
    bar = tqdm(total=train.max_steps, initial=state.step, desc="train sensitivity", unit="step",
               disable=not accelerator.is_local_main_process)
    started = time.perf_counter()
    early = False
    model.train()
    while state.step < last and not early:
        idx = batch_for_step(len(examples), train.batch_size, params.seed, state.step)
        batch = {k: v.to(accelerator.device) for k, v in collate([examples[i] for i in idx],
                                                                tokenizer.pad_token_id).items()}
        with accelerator.accumulate(model):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
            loss = loss_fn(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))
            optimizer_step(accelerator, loss, optimizer, scheduler)
        record_step(state, loss, bar, scheduler, mlflow, train.log_every)
        if state.step % train.eval_every == 0 or state.step == train.max_steps:
            probs = token_probs(accelerator.unwrap_model(model), tokenizer, [r["text"] for r in dev],
                                cfg.max_length, cfg.stride)
            metric = span_scores(dev, system_spans(dev, probs, 0.5, None))["all"]["f1"]
            model.train()
            early = record_dev(state, extra, metric, "span_f1", model, out_dir, train.patience, accelerator, mlflow)
        if state.step % train.save_every == 0 or state.step == last or early:
            save_checkpoint(accelerator, out_dir, state, extra)
    bar.close()
    summary.update(seconds=round(time.perf_counter() - started, 1), losses=state.losses, dev=state.dev,
                   best_step=state.best_step, early_stopped=early,
                   best_dev_span_f1=state.best_metric if state.best_step >= 0 else None)
    if state.step < train.max_steps and not early:
        summary["stopped_at"] = state.step
        return summary

    merged = save_selected(accelerator, model, tokenizer, out_dir, state)
    probs = token_probs(merged, tokenizer, [r["text"] for r in dev], cfg.max_length, cfg.stride)
    rules = [detector_spans(r["text"]) for r in dev]
    grid = {}
    for t in cfg.threshold_grid:
        grid[str(t)] = span_scores(dev, system_spans(dev, probs, t, rules))["all"]["f1"]
    threshold = float(max(cfg.threshold_grid, key=lambda t: (grid[str(t)], -abs(t - 0.5))))
    (out_dir / "threshold.json").write_text(json.dumps({"threshold": threshold, "dev_f1_by_threshold": grid},
                                                       indent=2) + "\n")
    summary.update(threshold=threshold, dev_f1_by_threshold=grid)
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    shutil.rmtree(out_dir / "best_adapter", ignore_errors=True)
    return summary


def run_train_sensitivity(params: Params) -> dict[str, Any]:
    """The train_sensitivity stage: the recipe in one MLflow run, plus DVC metrics."""
    from apex_models.tracking import stage_run

    require_config(params)
    paths = sensitivity_paths(params)
    with stage_run("train_sensitivity", params, ["sensitivity", "trainer"],
                   data={"datasets/sensitivity": paths.data}) as mlflow:
        summary = train_sensitivity(params, paths.data, paths.model, mlflow=mlflow)
        summary["mlflow_run_id"] = mlflow.active_run().info.run_id
        for key in ("trainable_params", "examples", "seconds", "best_step", "threshold"):
            mlflow.log_metric(f"summary/{key}", float(summary[key]))
        mlflow.log_artifacts(str(paths.model / "adapter"), "adapter")
        mlflow.log_artifacts(str(paths.model / "merged"), "merged_model")
    (paths.model / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    metrics = {k: summary.get(k) for k in ("examples", "trainable_params", "seconds", "best_step",
                                           "best_dev_span_f1", "early_stopped", "threshold")}
    metrics["final_loss"] = summary["losses"][-1][1]
    (paths.model / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return summary
