"""Recipe: fine-tune the bi-encoder with LoRA, in-batch and hard negatives, through accelerate.

The steps, in order:
  1. seed; build the training pairs: the configured mix of query-like sources
     (apex_models.data.embedder_mix) or, with `mix: null`, the dataset's train split as is;
  2. mine hard negatives per pair (BM25 and/or the base embedder, false negatives
     skipped; apex_models.training.negatives) when `hard_negatives` > 0;
  3. load the base model and wrap it with a PEFT LoRA adapter;
  4. score the un-tuned model on the dev benchmark: step 0, the first candidate;
  5. train: each batch is (query, code) pairs plus each query's hard negatives, every
     other document in the batch a negative too; no text appears twice in a batch (a
     copy would be its own negative). With `mini_batch_size` the loss is cached
     (GradCache, apex_models.training.contrastive): the batch can exceed memory;
  6. every `save_every` steps save a resumable checkpoint (model, optimizer, scheduler,
     RNG); every `eval_every` steps score dev and keep the best adapter; `patience`
     evaluations in a row without a new best stop the run early;
  7. merge the best adapter (the untouched one when no step beat the base) into the
     base and save a plain transformers model.

The batch order and the negatives drawn are pure functions of (seed, step), so a run
resumed from a checkpoint sees exactly the batches an uninterrupted run would: the
resume test checks the losses match.
"""

from __future__ import annotations

import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from apex_models.config import PairMixConfig, Params
from apex_models.data.embedder_mix import training_pairs
from apex_models.data.task_data import split_files
from apex_models.evaluation.retrieval import BeirDataset, dense_run, evaluate_run, load_beir
from apex_models.models.base import resolve_base_model
from apex_models.models.embedder import TorchEncoder, embed_batch
from apex_models.training.common import (CHECKPOINTS, fingerprint, optimizer_step, piece_backward, prepare_training,
                                         record_base, record_dev, record_step, resume, save_checkpoint, save_selected, with_lora)
from apex_models.training.contrastive import cached_info_nce, info_nce
from apex_models.training.negatives import mine_hard_negatives, pick_negatives
from apex_models.training.seed import set_seed


def epoch_batches(pairs: list[tuple[str, str]], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of pair indices for one epoch; a text already in a batch waits for the next.

    In-batch negatives assume every other row is irrelevant; a repeated query or code
    would be its own negative, so duplicates are deferred rather than batched together.
    Only full batches are returned (the remainder carries into nothing), keeping the
    number of negatives constant.
    """
    order = np.random.default_rng([seed, epoch]).permutation(len(pairs)).tolist()
    pending: deque[int] = deque(order)
    batches: list[list[int]] = []
    while len(pending) >= batch_size:
        batch, seen, deferred = [], set(), []
        while pending and len(batch) < batch_size:
            i = pending.popleft()
            query, code = pairs[i]
            if query in seen or code in seen:
                deferred.append(i)
                continue
            seen.update((query, code))
            batch.append(i)
        pending.extend(deferred)
        if len(batch) < batch_size:
            break
        batches.append(batch)
    if not batches:
        raise ValueError(f"{len(pairs)} distinct pairs cannot fill one batch of {batch_size}")
    return batches


def batch_for_step(pairs: list[tuple[str, str]], batch_size: int, seed: int, step: int,
                   stream: dict[str, Any]) -> list[int]:
    """The batch of a global step: epochs' batches laid end to end, built on demand."""
    batches = stream.setdefault("batches", [])
    while len(batches) <= step:
        epoch = stream.get("epochs", 0)
        batches.extend(epoch_batches(pairs, batch_size, seed, epoch))
        stream["epochs"] = epoch + 1
    return batches[step]


def _lora_model(params: Params):
    from transformers import AutoModel, AutoTokenizer

    cfg = params.embedder
    path = resolve_base_model(cfg.base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path)
    model = with_lora(model, cfg.lora, params.trainer)
    return model, tokenizer


def _dev_metric(encoder: TorchEncoder, dev: BeirDataset, limit_queries: int, batch_size: int) -> float:
    queries = dict(list(dev.queries.items())[:limit_queries])
    subset = BeirDataset(dev.corpus, queries, {q: dev.qrels[q] for q in queries})
    run = dense_run(subset, lambda t: encoder.encode_queries(t, batch_size),
                    lambda t: encoder.encode_documents(t, batch_size))
    return evaluate_run(run, subset.qrels)["mrr@10"]


def source_files(data: PairMixConfig, train_path: Path, sources_dir: Path | None) -> list[Path]:
    """What the training pairs come from: the train split's data, plus the source files a mix reads."""
    files = split_files(train_path)
    if data.mix and sources_dir is not None:
        for name in ("stackexchange", "tldr"):
            path = Path(sources_dir) / f"{name}.jsonl"
            if data.mix.get(name, 0) > 0 and path.is_file():
                files.append(path)
    return files


def run_fingerprint(params: Params, train_path: Path, sources_dir: Path | None = None) -> str:
    """What a checkpoint must match to be resumed: the recipe's config and its data."""
    return fingerprint({"seed": params.seed, "embedder": params.embedder.model_dump(mode="json"),
                        "trainer": params.trainer.model_dump(mode="json")},
                       source_files(params.embedder.data, train_path, sources_dir))


def mined_negatives(params: Params, pairs: list[tuple[str, str]]) -> tuple[list[list[int]], dict]:
    """Step 2: hard negatives from BM25 and/or the un-tuned base model (a pure function of its inputs)."""
    cfg, mining = params.embedder, params.embedder.train.mining
    encoder = None
    if mining.method != "bm25" or mining.max_positive_ratio < 1.0:
        encoder = TorchEncoder.from_base(cfg.base, cfg.pooling, cfg.normalize, cfg.query_max_length,
                                         cfg.train.doc_max_length)
    started = time.perf_counter()
    mined, skipped = mine_hard_negatives(
        pairs, mining.top_k, mining.method,
        encoder and (lambda t: encoder.encode_queries(t, params.evaluate.batch_size, progress=True)),
        encoder and (lambda t: encoder.encode_documents(t, params.evaluate.batch_size, progress=True)),
        skip_top=mining.skip_top, max_code_jaccard=mining.max_code_jaccard,
        max_positive_ratio=mining.max_positive_ratio)
    report = {"skipped": skipped, "seconds": round(time.perf_counter() - started, 1),
              "mean_per_query": round(float(np.mean([len(m) for m in mined])), 2)}
    return mined, report


def train_embedder(params: Params, train_path: Path, dev_dir: Path | None, out_dir: Path,
                   mlflow=None, stop_after: int | None = None, sources_dir: Path | None = None) -> dict[str, Any]:
    """Run the recipe; resume from the newest checkpoint in `out_dir` if there is one.

    `sources_dir` holds the ingest_sources stage's records (stackexchange.jsonl,
    tldr.jsonl) that a mix may draw from; absent, those sources give no pairs.

    `stop_after` ends the loop early after that many total steps (as a crash would),
    leaving the checkpoints in place; the tests use it to prove resume is exact.
    Returns a summary with the loss curve and the dev scores.
    """
    cfg, train = params.embedder, params.embedder.train
    if params.trainer.num_threads:
        torch.set_num_threads(params.trainer.num_threads)
    set_seed(params.seed)
    out_dir.mkdir(parents=True, exist_ok=True)

    # 1-2. data and hard negatives
    pairs, mix_counts = training_pairs(cfg.data, train.max_train_pairs, params.seed, train_path, sources_dir)
    mined, mining = mined_negatives(params, pairs) if train.hard_negatives else (None, None)
    dev = load_beir(dev_dir) if dev_dir and Path(dev_dir).exists() else None

    # 3. model, optimizer, schedule
    model, tokenizer = _lora_model(params)
    model, optimizer, scheduler, accelerator, counts = prepare_training(
        model, train, params.trainer, train.batch_size)
    encoder = TorchEncoder(accelerator.unwrap_model(model), tokenizer, cfg.pooling, cfg.normalize,
                           cfg.query_max_length, cfg.doc_max_length)

    # 4. resume, or score the baseline: step 0 is a candidate like any other
    state, extra, resumed = resume(accelerator, out_dir, run_fingerprint(params, train_path, sources_dir),
                                   {"bad_evals": 0})
    base_dev = None
    if dev is not None and not resumed:
        with accelerator.unwrap_model(model).disable_adapter():
            base_dev = _dev_metric(encoder, dev, train.eval_dev_queries, params.evaluate.batch_size)
        record_base(state, base_dev, "mrr_at_10", model, out_dir, accelerator, mlflow)
    summary = {**counts, "pairs": len(pairs), "mix": mix_counts, "mining": mining,
               "base_dev_mrr@10": base_dev}

    def embed(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return embed_batch(model, inputs["input_ids"].to(accelerator.device),
                           inputs["attention_mask"].to(accelerator.device), cfg.pooling, cfg.normalize)

    # 5-6. train
    stream: dict[str, Any] = {}
    scale = 1.0 / train.temperature
    last = min(train.max_steps, stop_after) if stop_after else train.max_steps
    bar = tqdm(total=train.max_steps, initial=state.step, desc="train embedder", unit="step",
               disable=not accelerator.is_local_main_process)
    started = time.perf_counter()
    early = False
    model.train()
    while state.step < last and not early:
        idx = batch_for_step(pairs, train.batch_size, params.seed, state.step, stream)
        queries = [pairs[i][0] for i in idx]
        docs = [pairs[i][1] for i in idx]  # row i's positive is document i; negatives follow
        if mined is not None:
            docs += [pairs[j][1] for j in pick_negatives(idx, pairs, mined, train.hard_negatives,
                                                         params.seed, state.step)]
        q = tokenizer(queries, padding=True, truncation=True, max_length=cfg.query_max_length, return_tensors="pt")
        d = tokenizer(docs, padding=True, truncation=True, max_length=train.doc_max_length, return_tensors="pt")
        q, d = {k: q[k] for k in ("input_ids", "attention_mask")}, {k: d[k] for k in ("input_ids", "attention_mask")}
        with accelerator.accumulate(model):
            if train.mini_batch_size and train.mini_batch_size < len(docs):
                loss = cached_info_nce(embed, q, d, scale, train.mini_batch_size, piece_backward(accelerator))
                optimizer_step(accelerator, None, optimizer, scheduler)
            else:
                loss = info_nce(embed(q), embed(d), scale)
                optimizer_step(accelerator, loss, optimizer, scheduler)
        record_step(state, loss, bar, scheduler, mlflow, train.log_every)
        if dev is not None and (state.step % train.eval_every == 0 or state.step == train.max_steps):
            metric = _dev_metric(encoder, dev, train.eval_dev_queries, params.evaluate.batch_size)
            model.train()
            early = record_dev(state, extra, metric, "mrr_at_10", model, out_dir, train.patience, accelerator, mlflow)
        if state.step % train.save_every == 0 or state.step == last or early:
            save_checkpoint(accelerator, out_dir, state, extra)
    bar.close()
    summary["seconds"] = round(time.perf_counter() - started, 1)
    summary["losses"] = state.losses
    summary["dev"] = state.dev
    summary["best_step"] = state.best_step
    summary["best_dev_mrr@10"] = state.best_metric if state.best_step >= 0 else None
    summary["early_stopped"] = early
    if state.step < train.max_steps and not early:
        summary["stopped_at"] = state.step
        return summary

    # 7. merge the selected adapter and save a plain model
    save_selected(accelerator, model, tokenizer, out_dir, state)
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)  # finished: nothing left to resume
    shutil.rmtree(out_dir / "best_adapter", ignore_errors=True)
    return summary

