"""Recipe: the cross-encoder ranker (query, candidate) -> relevance, from the packaged MiniLM.

The steps, in order (state is set up in one place, the top of `train_ranker`):
  1. seed; read the ranker dataset (the ranker_dataset stage,
     apex_models.data.ranker_dataset): (query, document) pairs from the ranker's own mix
     of the embedder's sources, cut to `max_train_pairs` (the ranker re-ranks web-style
     code queries (CoSQA) and questions over answers (Stack Exchange), so it trains on
     both);
  2. with each pair, its hard negatives, mined there with BM25 and the current embedder:
     at search time the ranker orders the embedder's top-k, so its negatives should be
     what the embedder ranks high; a Stack Exchange question's other answer is always one;
  3. AutoModelForSequenceClassification (num_labels=1) with LoRA on the encoder, the
     pooler and the scoring head trained in full;
  4. each step: `batch_size` queries, each with its positive and `negatives` negatives;
     listwise softmax cross-entropy over each group (or BCE per pair). With
     `first_stage_scale` > 0 a pair's score is that scale times the embedder's cosine
     (the dataset's vectors) plus the cross-encoder's logit, and the scoring head starts
     at zero: the untrained ranker orders a top-k exactly as the embedder does, and the
     loss moves it only where the embedder is wrong. A cross-encoder trained alone on
     this budget fell far below the embedder it re-ranks (conf/ranker/minilm.yaml);
  5. resumable checkpoints every `save_every` steps; with `eval_every`, the embedder's
     top-k re-ranked every `eval_every` steps on a slice of CoSQA dev and on the held-out
     Stack Exchange questions, the step with the largest smaller nDCG@10 gain kept, step 0
     (the untouched ranker: with `first_stage_scale`, the embedder's own order, gain 0) a
     candidate too, and `patience` evaluations without a new best stop the run;
  6. merge the best step's adapter and save.

Batches and negative choices are pure functions of (seed, step), so a resumed run sees
what an uninterrupted one would.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from apex_models.config import Params, RankerConfig
from apex_models.data.ranker_dataset import read_ranker_dataset
from apex_models.data.task_data import split_files
from apex_models.models.base import resolve_base_model
from apex_models.training.common import (CHECKPOINTS, batch_for_step, fingerprint, optimizer_step, prepare_training,
                                         record_base, record_dev, record_step, resume, save_checkpoint, save_selected, with_lora)
from apex_models.training.seed import set_seed


def negatives_for(step: int, query_index: int, mined: list[int], n: int, n_pairs: int, seed: int,
                  always: list[int] = ()) -> list[int]:
    """`n` negatives for a query at a step: `always` (its question's other answers), then a
    seeded draw from its mined list, random rows to fill."""
    rng = np.random.default_rng([seed, step, query_index])
    chosen = list(always[:n])
    if mined:
        chosen += [j for j in (mined[k] for k in rng.permutation(len(mined))) if j not in chosen][:n - len(chosen)]
    while len(chosen) < n:
        j = int(rng.integers(n_pairs))
        if j != query_index and j not in chosen:
            chosen.append(j)
    return chosen


def first_stage_logits(vectors: tuple[np.ndarray, np.ndarray], query: int, docs: list[int],
                       scale: float) -> np.ndarray:
    """`scale` x the embedder's cosine of query row `query` with each document row in `docs`:
    the part of a pair's score the ranker does not have to learn."""
    query_vectors, doc_vectors = vectors
    return scale * (doc_vectors[docs] @ query_vectors[query])


def _model(cfg: RankerConfig, trainer_cfg):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_base_model(cfg.base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    if cfg.first_stage_scale:  # a zero correction to start: the embedder's ranking, exactly
        torch.nn.init.zeros_(model.classifier.weight)
        torch.nn.init.zeros_(model.classifier.bias)
    model = with_lora(model, cfg.lora, trainer_cfg, modules_to_save=("classifier", "pooler"))
    return model, tokenizer


def train_ranker(params: Params, data_dir: Path, out_dir: Path, mlflow=None,
                 stop_after: int | None = None, dev=None) -> dict[str, Any]:
    """Run the recipe on the ranker dataset at `data_dir`; resume from the newest checkpoint
    in `out_dir` if there is one. `dev` (name -> `evaluation.rerank.RerankDev`) turns on
    selection every `train.eval_every` steps by the smallest dev nDCG@10 gain over step 0
    (the embedder's own order): the ranker must lift every kind of query it re-ranks, as
    its promotion rule (`evaluation.rerank.ndcg_gain`) asks. Without it the last step ships.

    `stop_after` ends the loop after that many total steps (as a crash would), leaving
    the checkpoints; the tests use it to prove resume is exact.
    """
    cfg, train = params.ranker, params.ranker.train
    if params.trainer.num_threads:
        torch.set_num_threads(params.trainer.num_threads)
    set_seed(params.seed)
    out_dir.mkdir(parents=True, exist_ok=True)

    # 1-2. pairs and their mined hard negatives
    pairs, mined, vectors, data_report, siblings = read_ranker_dataset(data_dir)
    if cfg.first_stage_scale and vectors is None:
        raise ValueError(f"{data_dir} has no first-stage vectors but ranker.first_stage_scale is "
                         f"{cfg.first_stage_scale}: re-run the ranker_dataset stage")

    # 3. model, optimizer, schedule
    model, tokenizer = _model(cfg, params.trainer)
    model, optimizer, scheduler, accelerator, counts = prepare_training(
        model, train, params.trainer, train.batch_size * (train.negatives + 1))

    run_fp = fingerprint({"seed": params.seed, "ranker": cfg.model_dump(mode="json"),
                          "trainer": params.trainer.model_dump(mode="json"),
                          **({"dev": {name: d.digest() for name, d in dev.items()}} if dev else {})},  # they pick the step
                         split_files(Path(data_dir) / "train"))
    state, extra, resumed = resume(accelerator, out_dir, run_fp, {"bad_evals": 0})
    evaluate = bool(dev) and train.eval_every is not None

    def dev_gain() -> float:
        """The smallest nDCG@10 gain over step 0 across the dev sets; each set's nDCG is logged."""
        from apex_models.evaluation.rerank import CrossEncoder

        scorer = CrossEncoder.from_model(accelerator.unwrap_model(model), tokenizer, cfg.max_length,
                                         cfg.eval.batch_size)
        scores = {name: d.ndcg(scorer) for name, d in dev.items()}
        model.train()
        extra.setdefault("dev_base", scores)  # step 0's, kept through a resume by the checkpoint's extra
        extra.setdefault("dev_ndcg", []).append([state.step, scores])
        if mlflow:
            mlflow.log_metrics({f"dev/ndcg_at_10/{name}": v for name, v in scores.items()}, step=state.step)
        return min(scores[name] - extra["dev_base"][name] for name in scores)

    if evaluate and not resumed:  # step 0: the untouched ranker is the first candidate
        record_base(state, dev_gain(), "min_ndcg_at_10_gain", model, out_dir, accelerator, mlflow)
    summary: dict[str, Any] = {**counts, "pairs": len(pairs), "mix": data_report["mix"],
                               "mined_by": data_report["mined_by"],
                               "mined_per_query": data_report["mined_per_query"],
                               "first_stage": data_report.get("first_stage") if cfg.first_stage_scale else None,
                               "first_stage_scale": cfg.first_stage_scale}

    # 4-5. train
    group = train.negatives + 1
    last = min(train.max_steps, stop_after) if stop_after else train.max_steps
    bar = tqdm(total=train.max_steps, initial=state.step, desc="train ranker", unit="step",
               disable=not accelerator.is_local_main_process)
    started = time.perf_counter()
    early = False
    model.train()
    while state.step < last and not early:
        idx = batch_for_step(data_report["anchors"], train.batch_size, params.seed, state.step)
        queries, docs, prior = [], [], np.zeros((len(idx), group), dtype=np.float32)
        for row, i in enumerate(idx):
            group_rows = [i, *negatives_for(state.step, i, mined[i], train.negatives, len(pairs), params.seed,
                                            siblings[i])]
            for j in group_rows:
                queries.append(pairs[i][0])
                docs.append(pairs[j][1])
            if cfg.first_stage_scale:
                prior[row] = first_stage_logits(vectors, i, group_rows, cfg.first_stage_scale)
        batch = tokenizer(queries, docs, padding=True, truncation="longest_first", max_length=train.max_length,
                          return_tensors="pt").to(accelerator.device)
        with accelerator.accumulate(model):
            scores = model(**batch).logits.float().view(len(idx), group) + torch.from_numpy(prior).to(
                accelerator.device)
            if train.loss == "listwise":
                loss = torch.nn.functional.cross_entropy(scores, torch.zeros(len(idx), dtype=torch.long,
                                                                             device=scores.device))
            else:
                target = torch.zeros_like(scores)
                target[:, 0] = 1.0
                loss = torch.nn.functional.binary_cross_entropy_with_logits(scores, target)
            optimizer_step(accelerator, loss, optimizer, scheduler)
        record_step(state, loss, bar, scheduler, mlflow, train.log_every)
        if evaluate and (state.step % train.eval_every == 0 or state.step == train.max_steps):
            early = record_dev(state, extra, dev_gain(), "min_ndcg_at_10_gain", model, out_dir, train.patience,
                               accelerator, mlflow)
        if state.step % train.save_every == 0 or state.step == last or early:
            save_checkpoint(accelerator, out_dir, state, extra)
    bar.close()
    summary.update(seconds=round(time.perf_counter() - started, 1), losses=state.losses, dev=state.dev,
                   best_step=state.best_step if evaluate else None, early_stopped=early,
                   base_dev_ndcg_at_10=extra.get("dev_base"), dev_ndcg_at_10=extra.get("dev_ndcg", []),
                   best_dev_min_gain=state.best_metric if evaluate else None)
    if state.step < train.max_steps and not early:
        summary["stopped_at"] = state.step
        return summary

    save_selected(accelerator, model, tokenizer, out_dir, state)  # without a dev set: the last step
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    shutil.rmtree(out_dir / "best_adapter", ignore_errors=True)
    return summary


def ranker_paths(params: Params) -> dict[str, Path]:
    data = Path(params.paths.data)
    return {"dataset": data / "datasets" / "ranker",
            "model": Path(params.paths.models) / "ranker", "embedder": Path(params.paths.models) / "embedder" / "merged",
            "results": Path(params.paths.results), "benchmarks": data / "benchmarks"}


def _dev_sets(params: Params, benchmarks: Path, dataset: Path) -> dict:
    """The dev sets that choose the step, re-ranked as evaluate_ranker re-ranks the test sets:
    CoSQA dev (`cosqa-dev`, from the benchmarks stage; absent without shared/) and the Stack
    Exchange questions the ranker dataset held out of training (`qa-dev`). Empty when
    `eval_every` is unset or neither exists: then the last step ships."""
    import logging

    from apex_models.data.ranker_dataset import QA_DEV
    from apex_models.evaluation.rerank import first_stage_encoder, rerank_dev

    cfg = params.ranker
    if cfg.train.eval_every is None:
        return {}
    folders = {"cosqa-dev": benchmarks / "cosqa-dev", QA_DEV: dataset / QA_DEV}
    found = {name: f for name, f in folders.items() if (f / "corpus.jsonl").is_file()}
    for name in sorted(set(folders) - set(found)):
        logging.getLogger(__name__).warning("no %s: the ranker's step is chosen without it", folders[name])
    if not found:
        return {}
    _, encoder = first_stage_encoder(params)
    return {name: rerank_dev(folder, encoder, cfg.train.dev_queries, cfg.eval.top_k, cfg.first_stage_scale,
                             params.evaluate.batch_size) for name, folder in found.items()}


def run_train_ranker(params: Params) -> dict[str, Any]:
    """The train_ranker stage: the ranker dataset (the ranker_dataset stage), one MLflow run."""
    from apex_models.tracking import stage_run

    if params.ranker is None:
        raise ValueError("params has no `ranker` section: re-run pipelines/compose.py")
    paths = ranker_paths(params)
    data, out = paths["dataset"], paths["model"]
    with stage_run("train_ranker", params, ["ranker", "trainer"], data={"datasets/ranker": data}) as mlflow:
        summary = train_ranker(params, data, out, mlflow=mlflow, dev=_dev_sets(params, paths["benchmarks"], data))
        summary["dataset"] = str(data)
        for name, count in summary["mix"].items():
            mlflow.log_metric(f"data/pairs/{name}", float(count))
        summary["mlflow_run_id"] = mlflow.active_run().info.run_id
        for key in ("trainable_params", "pairs", "seconds", "best_step", "best_dev_min_gain"):
            if summary.get(key) is not None:
                mlflow.log_metric(f"summary/{key}", float(summary[key]))
        mlflow.log_artifacts(str(out / "adapter"), "adapter")
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    metrics = {k: summary[k] for k in ("pairs", "trainable_params", "seconds", "base_dev_ndcg_at_10", "best_step",
                                        "best_dev_min_gain", "early_stopped")}
    metrics["final_loss"] = summary["losses"][-1][1]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return summary
