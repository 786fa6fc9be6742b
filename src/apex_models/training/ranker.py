"""Recipe: the cross-encoder ranker (query, candidate) -> relevance, from the packaged MiniLM.

The steps, in order (state is set up in one place, the top of `train_ranker`):
  1. seed; build (query, document) pairs from the ranker's own mix of the embedder's
     sources (docstrings, web-style queries, CoNaLa, Stack Exchange, tldr; see
     apex_models.data.embedder_mix), cut to `max_train_pairs`: the ranker re-ranks web-style
     code queries (CoSQA) and questions over answers (Stack Exchange), so it trains on both;
  2. mine hard negatives per query with BM25 over the pairs' documents, and with the
     current embedder when `embedder_negatives`: at search time the ranker orders the
     embedder's top-k, so its negatives should be what the embedder ranks high;
  3. AutoModelForSequenceClassification (num_labels=1) with LoRA on the encoder, the
     pooler and the scoring head trained in full;
  4. each step: `batch_size` queries, each with its positive and `negatives` negatives;
     listwise softmax cross-entropy over each group (or BCE per pair);
  5. resumable checkpoints every `save_every` steps; at the end merge and save.

Batches and negative choices are pure functions of (seed, step), so a resumed run sees
what an uninterrupted one would.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import textwrap
import time
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from apex_models.config import Params, RankerConfig
from apex_models.evaluation.retrieval import BeirDataset, bm25_run, dense_run
from apex_models.models.base import resolve_base_model
from apex_models.training.common import (CHECKPOINTS, batch_for_step, fingerprint, optimizer_step, prepare_training,
                                         record_step, resume, save_checkpoint, save_selected, with_lora)
from apex_models.training.embedder import source_files, training_pairs
from apex_models.training.seed import set_seed

log = logging.getLogger(__name__)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def mine_negatives(pairs: list[tuple[str, str]], top_k: int, embedder=None) -> list[list[int]]:
    """Per pair, indices (into `pairs`) of other pairs' code ranked high for its query.

    Candidates are BM25's top-`top_k` (plus the embedder's, interleaved, when given).
    False negatives are skipped: a candidate whose code equals the positive's, or whose
    own query is the same text (the same description twice, e.g. two `get` functions
    both "Return the value for key", means both are right answers, not one wrong one).
    """
    codes = {f"d{i}": code for i, (_, code) in enumerate(pairs)}
    queries = {f"q{i}": query for i, (query, _) in enumerate(pairs)}
    ds = BeirDataset(codes, queries, {f"q{i}": {f"d{i}": 1} for i in range(len(pairs))})
    runs = [bm25_run(ds, k=top_k + 1)]
    if embedder is not None:
        runs.append(dense_run(ds, embedder.encode_queries,
                              lambda texts: embedder.encode_documents(texts, progress=True), k=top_k + 1))
    out = []
    norm_queries = [_norm(q) for q, _ in pairs]
    for i, (_, code) in enumerate(pairs):
        ranked = [d for tier in zip_longest(*(run.get(f"q{i}", []) for run in runs)) for d in tier if d]
        seen, picked = set(), []
        for did in ranked:
            j = int(did[1:])
            if j != i and j not in seen and pairs[j][1] != code and norm_queries[j] != norm_queries[i]:
                seen.add(j)
                picked.append(j)
        out.append(picked[:top_k])
    return out


def negatives_for(step: int, query_index: int, mined: list[int], n: int, n_pairs: int, seed: int) -> list[int]:
    """`n` negatives for a query at a step: a seeded draw from its mined list, random pairs to fill."""
    rng = np.random.default_rng([seed, step, query_index])
    chosen = [mined[k] for k in rng.permutation(len(mined))[:n]] if mined else []
    while len(chosen) < n:
        j = int(rng.integers(n_pairs))
        if j != query_index and j not in chosen:
            chosen.append(j)
    return chosen


def _model(cfg: RankerConfig, trainer_cfg):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_base_model(cfg.base)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    model = with_lora(model, cfg.lora, trainer_cfg, modules_to_save=("classifier", "pooler"))
    return model, tokenizer


def train_ranker(params: Params, train_path: Path, out_dir: Path, mlflow=None,
                 stop_after: int | None = None, sources_dir: Path | None = None) -> dict[str, Any]:
    """Run the recipe; resume from the newest checkpoint in `out_dir` if there is one.

    `sources_dir` holds the ingest_sources stage's records (stackexchange.jsonl, tldr.jsonl)
    the mix may draw from; absent, those sources give no pairs.

    `stop_after` ends the loop after that many total steps (as a crash would), leaving
    the checkpoints; the tests use it to prove resume is exact.
    """
    cfg, train = params.ranker, params.ranker.train
    if params.trainer.num_threads:
        torch.set_num_threads(params.trainer.num_threads)
    set_seed(params.seed)
    out_dir.mkdir(parents=True, exist_ok=True)

    # 1-2. data and hard negatives
    pairs, mix_counts = training_pairs(cfg.data, train.max_train_pairs, params.seed, train_path, sources_dir)
    started = time.perf_counter()
    embedder = None
    if train.embedder_negatives:
        from apex_models.models.embedder import TorchEncoder

        # The current embedder (what the ranker will re-rank behind), else the base model;
        # documents cut at the ranker's own length (what it will read of them), half the cost.
        current = Path(params.paths.models) / "embedder" / "merged"
        embedder = TorchEncoder.from_base(str(current) if (current / "config.json").is_file() else cfg.base,
                                          doc_max_length=train.max_length)
    mined = mine_negatives(pairs, train.mine_top_k, embedder)
    mining_seconds = round(time.perf_counter() - started, 1)

    # 3. model, optimizer, schedule
    model, tokenizer = _model(cfg, params.trainer)
    model, optimizer, scheduler, accelerator, counts = prepare_training(
        model, train, params.trainer, train.batch_size * (train.negatives + 1))

    run_fp = fingerprint({"seed": params.seed, "ranker": cfg.model_dump(mode="json"),
                          "trainer": params.trainer.model_dump(mode="json")},
                         source_files(cfg.data, train_path, sources_dir))
    state, _, _ = resume(accelerator, out_dir, run_fp)
    summary: dict[str, Any] = {**counts, "pairs": len(pairs), "mix": mix_counts,
                               "mining_seconds": mining_seconds,
                               "mined_per_query": round(float(np.mean([len(m) for m in mined])), 2)}

    # 4-5. train
    group = train.negatives + 1
    last = min(train.max_steps, stop_after) if stop_after else train.max_steps
    bar = tqdm(total=train.max_steps, initial=state.step, desc="train ranker", unit="step",
               disable=not accelerator.is_local_main_process)
    started = time.perf_counter()
    model.train()
    while state.step < last:
        idx = batch_for_step(len(pairs), train.batch_size, params.seed, state.step)
        queries, docs = [], []
        for i in idx:
            negs = negatives_for(state.step, i, mined[i], train.negatives, len(pairs), params.seed)
            for j in [i, *negs]:
                queries.append(pairs[i][0])
                docs.append(pairs[j][1])
        batch = tokenizer(queries, docs, padding=True, truncation="longest_first", max_length=train.max_length,
                          return_tensors="pt").to(accelerator.device)
        with accelerator.accumulate(model):
            scores = model(**batch).logits.float().view(len(idx), group)
            if train.loss == "listwise":
                loss = torch.nn.functional.cross_entropy(scores, torch.zeros(len(idx), dtype=torch.long,
                                                                             device=scores.device))
            else:
                target = torch.zeros_like(scores)
                target[:, 0] = 1.0
                loss = torch.nn.functional.binary_cross_entropy_with_logits(scores, target)
            optimizer_step(accelerator, loss, optimizer, scheduler)
        record_step(state, loss, bar, scheduler, mlflow, train.log_every)
        if state.step % train.save_every == 0 or state.step == last:
            save_checkpoint(accelerator, out_dir, state)
    bar.close()
    summary.update(seconds=round(time.perf_counter() - started, 1), losses=state.losses)
    if state.step < train.max_steps:
        summary["stopped_at"] = state.step
        return summary

    save_selected(accelerator, model, tokenizer, out_dir, state)  # no dev selection: the last step
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    return summary


_PAIR_MODULES = tuple(
    "posixpath shlex textwrap difflib calendar urllib.parse string base64 csv email.utils fnmatch glob gzip heapq "
    "ipaddress mimetypes ntpath os platform pprint shutil statistics tarfile tempfile uuid zipfile inspect json "
    "random bisect functools collections dataclasses typing enum fractions decimal datetime http.cookiejar "
    "http.server logging logging.handlers argparse configparser gettext locale subprocess threading queue "
    "asyncio.tasks asyncio.streams email.message email.header html.parser xml.dom.minidom xml.etree.ElementTree "
    "urllib.request ftplib smtplib imaplib poplib mailbox wave colorsys quopri netrc plistlib "
    "tokenize ast dis pickletools trace tracemalloc timeit cProfile pstats pdb doctest unittest.case "
    "importlib.util importlib.metadata pkgutil sysconfig zipimport compileall py_compile filecmp linecache "
    "codecs encodings.idna stringprep textwrap reprlib copy weakref contextlib abc numbers operator".split())


def stdlib_pairs(limit: int = 2000) -> list[dict]:
    """(docstring first line -> function source) pairs from the standard library.

    Real code with real descriptions, available on any machine: the stand-in training
    set when the embedder's dataset (which needs the ingest stage) has not been built.
    """
    import importlib

    pairs, seen = [], set()
    for name in _PAIR_MODULES:
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 (platform-specific modules fail to import)
            continue
        for fname, fn in sorted(inspect.getmembers(module, inspect.isfunction)):
            doc = inspect.getdoc(fn)
            if fname.startswith("_") or not doc or fn.__module__ != module.__name__:
                continue
            summary = doc.strip().splitlines()[0].rstrip(".")
            if len(summary.split()) < 3 or summary in seen:
                continue
            try:
                code = textwrap.dedent(inspect.getsource(fn))
            except (OSError, TypeError):
                continue
            seen.add(summary)
            pairs.append({"query": summary, "code": code, "source": f"stdlib:{name}"})
            if len(pairs) >= limit:
                return pairs
    return pairs


def write_fallback_pairs(shared_dir: Path, out_path: Path) -> Path:
    """CoNaLa train + standard-library pairs, decontaminated against every benchmark."""
    from apex_models.data.conala import load_conala_pairs
    from apex_models.data.decontam import Decontaminator, load_benchmark_texts

    rows = [{"query": p["query"], "code": p["code"], "source": "conala"} for p in load_conala_pairs(shared_dir)]
    rows += stdlib_pairs()
    decon = Decontaminator(load_benchmark_texts(shared_dir, ["cosqa", "conala", "intent", "qa"]))
    clean = [r for r in rows if decon.is_contaminated(r["query"], r["code"]) is None]
    log.info("fallback ranker pairs: %d of %d kept after decontamination", len(clean), len(rows))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with open(out_path, "w", encoding="utf-8") as fh:
        for row in clean:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return out_path


def ranker_paths(params: Params) -> dict[str, Path]:
    data = Path(params.paths.data)
    return {"pairs": data / "datasets" / "embedder" / "train.jsonl",
            "fallback_pairs": data / "datasets" / "ranker" / "train.jsonl",
            "model": Path(params.paths.models) / "ranker", "embedder": Path(params.paths.models) / "embedder" / "merged",
            "results": Path(params.paths.results), "benchmarks": data / "benchmarks"}


def run_train_ranker(params: Params) -> dict[str, Any]:
    """The train_ranker stage: the embedder's training pairs (or the fallback), one MLflow run."""
    from apex_models.layout import layout
    from apex_models.tracking import stage_run

    if params.ranker is None:
        raise ValueError("params has no `ranker` section: re-run pipelines/compose.py")
    paths = ranker_paths(params)
    train_path = paths["pairs"]
    if not train_path.is_file():
        log.warning("%s not built: training on CoNaLa + standard-library pairs instead", train_path)
        train_path = write_fallback_pairs(Path(params.paths.shared), paths["fallback_pairs"])
    out, sources = paths["model"], layout(params).sources
    with stage_run("train_ranker", params, ["ranker", "trainer"], data={"pairs": train_path, "sources": sources}) as mlflow:
        summary = train_ranker(params, train_path, out, mlflow=mlflow, sources_dir=sources)
        summary["train_file"] = str(train_path)
        for name, count in summary["mix"].items():
            mlflow.log_metric(f"data/pairs/{name}", float(count))
        summary["mlflow_run_id"] = mlflow.active_run().info.run_id
        for key in ("trainable_params", "pairs", "seconds", "mining_seconds"):
            mlflow.log_metric(f"summary/{key}", float(summary[key]))
        mlflow.log_artifacts(str(out / "adapter"), "adapter")
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    metrics = {k: summary[k] for k in ("pairs", "trainable_params", "seconds", "mining_seconds")}
    metrics["final_loss"] = summary["losses"][-1][1]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return summary
