"""Recipe: the planner, goal (+ context) -> ordered steps, as text generation.

The steps, in order (state is set up in one place, the top of `train_planner`):
  1. seed; read the planner dataset (train and dev splits, built by data/planner_dataset.py);
  2. the model: for ``arch: encoder_decoder`` an EncoderDecoderModel warm-started from the
     packaged MiniLM on both sides (the decoder is the same BERT with causal masks and
     fresh cross-attention layers); for ``arch: causal_lm`` a decoder-only LM (the gpu
     profile's code LLM) that reads a prompt and continues it with the steps;
  3. full fine-tune, or LoRA (the new cross-attention of an encoder-decoder is then
     trained in full);
  4. each step: `batch_size` plans, token cross-entropy on the target only;
  5. every `eval_every` steps (and at the end) the dev loss; the best is kept and training
     stops after `patience` evaluations without improvement;
  6. resumable checkpoints every `save_every` steps; at the end the selected model (merged
     when LoRA) and its tokenizer go to ``model/``.

Batches are pure functions of (seed, step) and the RNG state is checkpointed, so a
resumed run sees what an uninterrupted one would.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from apex_models.config import Params, PlannerConfig, TrainerConfig
from apex_models.data.planner_dataset import load_planner_dataset, parse_steps
from apex_models.models.base import resolve_base_model
from apex_models.training.common import (CHECKPOINTS, batch_for_step, fingerprint, optimizer_step, prepare_training,
                                         record_step, resume, save_checkpoint, with_lora)
from apex_models.training.seed import set_seed

log = logging.getLogger(__name__)

BEST = "best"
PROMPT_SUFFIX = "\nSteps:"      # causal LM: what separates the goal from the plan it continues with


# ----------------------------------------------------------------------------- model

def build_model(cfg: PlannerConfig, trainer: TrainerConfig, layers: int | None = None):
    """(model, tokenizer) for the config; `layers` cuts every stack to that depth (tests)."""
    from transformers import AutoTokenizer

    base = resolve_base_model(cfg.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if cfg.arch == "encoder_decoder":
        from transformers import EncoderDecoderModel

        depth = {"encoder_num_hidden_layers": layers} if layers else {}
        if layers or cfg.decoder_layers:
            depth["decoder_num_hidden_layers"] = layers or cfg.decoder_layers
        model = EncoderDecoderModel.from_encoder_decoder_pretrained(
            base, resolve_base_model(cfg.decoder_base or cfg.base), **depth)
        model.config.decoder_start_token_id = tokenizer.cls_token_id
        model.config.pad_token_id = tokenizer.pad_token_id
        model.config.eos_token_id = tokenizer.sep_token_id
        model.generation_config.decoder_start_token_id = tokenizer.cls_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.sep_token_id
        if cfg.cross_attention_init == "self_attention":
            init_cross_attention_from_self(model.decoder)
        fresh = ("crossattention",)      # new layers: train them in full under LoRA
        if cfg.freeze_encoder:
            model.encoder.requires_grad_(False)
    else:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(base, **({"num_hidden_layers": layers} if layers else {}))
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"   # generation continues after the prompt
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        fresh = ()
    if cfg.finetune == "lora":
        model = with_lora(model, cfg.lora, trainer, modules_to_save=fresh)
    elif trainer.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tokenizer


def init_cross_attention_from_self(decoder) -> None:
    """Start each decoder layer's cross-attention as a copy of its self-attention.

    Fresh (random) cross-attention barely learned to read the source in a CPU budget: after
    300 steps the dev loss with the true source was 0.06 nats below that with another
    goal's source. Encoder and decoder are the same MiniLM, so a copy of the layer's
    self-attention already matches decoder positions to source tokens by their meaning.
    """
    for layer in decoder.bert.encoder.layer:
        layer.crossattention.load_state_dict(layer.attention.state_dict())


def encode_batch(tokenizer, cfg: PlannerConfig, inputs: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
    """Model inputs with `labels` (-100 where no loss: padding, and the prompt of a causal LM)."""
    if cfg.arch == "encoder_decoder":
        enc = tokenizer(inputs, max_length=cfg.max_source_length, truncation=True, padding=True, return_tensors="pt")
        # [CLS] starts the decoder (decoder_start_token_id): the labels are the rest, ending in [SEP]
        tgt = tokenizer(targets, max_length=cfg.max_target_length + 1, truncation=True, padding=True,
                        return_tensors="pt")
        labels = tgt["input_ids"][:, 1:].clone()
        labels[tgt["attention_mask"][:, 1:] == 0] = -100
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
    eos = tokenizer.eos_token or ""
    prompt_ids = [tokenizer(p + PROMPT_SUFFIX, max_length=cfg.max_source_length, truncation=True,
                            add_special_tokens=False)["input_ids"] for p in inputs]
    target_ids = [tokenizer(" " + t + eos, max_length=cfg.max_target_length, truncation=True,
                            add_special_tokens=False)["input_ids"] for t in targets]
    width = max(len(p) + len(t) for p, t in zip(prompt_ids, target_ids))
    ids = torch.full((len(inputs), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, (p, t) in enumerate(zip(prompt_ids, target_ids)):
        row = p + t
        start = width - len(row)                       # left padding, as at generation
        ids[i, start:] = torch.tensor(row)
        mask[i, start:] = 1
        labels[i, start + len(p):] = torch.tensor(t)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@torch.no_grad()
def generate_plans(model, tokenizer, cfg: PlannerConfig, inputs: list[str], max_new_tokens: int,
                   batch_size: int = 16, progress: bool = False) -> list[list[str]]:
    """Greedy decoding -> an ordered list of steps per input."""
    model.eval()
    out: list[list[str]] = []
    for start in tqdm(range(0, len(inputs), batch_size), desc="generate plans", unit="batch", disable=not progress):
        chunk = inputs[start:start + batch_size]
        if cfg.arch == "causal_lm":
            chunk = [c + PROMPT_SUFFIX for c in chunk]
        enc = tokenizer(chunk, max_length=cfg.max_source_length, truncation=True, padding=True,
                        add_special_tokens=cfg.arch == "encoder_decoder",   # as in encode_batch
                        return_tensors="pt").to(model.device)
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        if cfg.arch == "causal_lm":
            ids = ids[:, enc["input_ids"].shape[1]:]
        out += [parse_steps(t) for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return out


@torch.no_grad()
def mean_loss(model, tokenizer, cfg: PlannerConfig, rows: list[dict], batch_size: int, device) -> float:
    """Token-weighted target cross-entropy over `rows` (the dev selection signal)."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        batch = {k: v.to(device) for k, v in encode_batch(tokenizer, cfg, [r["input"] for r in chunk],
                                                          [r["target"] for r in chunk]).items()}
        n = int((batch["labels"] != -100).sum())
        total += float(model(**batch).loss) * n
        count += n
    model.train()
    return total / max(count, 1)


# ----------------------------------------------------------------------------- train

def _save_best(accelerator, model, out_dir: Path) -> None:
    """The current weights as the selected model (a LoRA model saves only its adapter)."""
    tmp = out_dir / f".tmp-{BEST}"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.unwrap_model(model).save_pretrained(tmp)
    shutil.rmtree(out_dir / BEST, ignore_errors=True)
    tmp.rename(out_dir / BEST)


def _finalize(accelerator, model, tokenizer, cfg: PlannerConfig, out_dir: Path) -> None:
    """``model/``: the best dev step's weights (LoRA merged), with the tokenizer."""
    final = out_dir / "model"
    shutil.rmtree(final, ignore_errors=True)
    if cfg.finetune == "lora":
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        peft_model = accelerator.unwrap_model(model)
        set_peft_model_state_dict(peft_model, load_file(str(out_dir / BEST / "adapter_model.safetensors")))
        shutil.rmtree(out_dir / "adapter", ignore_errors=True)
        shutil.copytree(out_dir / BEST, out_dir / "adapter")
        peft_model.merge_and_unload().save_pretrained(final)
        shutil.rmtree(out_dir / BEST, ignore_errors=True)
    else:
        (out_dir / BEST).rename(final)
    tokenizer.save_pretrained(final)


def load_planner(path: Path, cfg: PlannerConfig):
    """(model, tokenizer) of a trained planner folder, on CPU in eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, EncoderDecoderModel

    tokenizer = AutoTokenizer.from_pretrained(path)
    if cfg.arch == "encoder_decoder":
        model = EncoderDecoderModel.from_pretrained(path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
        tokenizer.padding_side = "left"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    return model.eval(), tokenizer


def train_planner(params: Params, data_dir: Path, out_dir: Path, mlflow=None, stop_after: int | None = None,
                  layers: int | None = None) -> dict[str, Any]:
    """Run the recipe; resume from the newest checkpoint in `out_dir` if there is one.

    `stop_after` ends the loop after that many total steps (as a crash would), leaving
    the checkpoints; the tests use it to prove resume is exact. `layers` cuts the model's
    depth (tests only).
    """
    cfg, train = params.planner, params.planner.train
    if params.trainer.num_threads:
        torch.set_num_threads(params.trainer.num_threads)
    set_seed(params.seed)
    out_dir.mkdir(parents=True, exist_ok=True)

    # 1. data
    ds = load_planner_dataset(data_dir)
    rows = ds["train"].to_list()
    dev = ds["dev"].shuffle(seed=params.seed).select(range(min(train.dev_plans, len(ds["dev"])))).to_list()

    # 2-3. model, optimizer, schedule
    model, tokenizer = build_model(cfg, params.trainer, layers)
    model, optimizer, scheduler, accelerator, counts = prepare_training(model, train, params.trainer,
                                                                        train.batch_size)
    run_fp = fingerprint({"seed": params.seed, "planner": cfg.model_dump(mode="json"), "layers": layers,
                          "trainer": params.trainer.model_dump(mode="json")},
                         sorted(p for p in Path(data_dir).rglob("*.arrow")))
    state, extra, _ = resume(accelerator, out_dir, run_fp, {"bad_evals": 0}, best_dir=BEST)
    bad_evals = extra["bad_evals"]

    # 4-6. train
    last = min(train.max_steps, stop_after) if stop_after else train.max_steps
    bar = tqdm(total=train.max_steps, initial=state.step, desc="train planner", unit="step",
               disable=not accelerator.is_local_main_process)
    started = time.perf_counter()
    early_stopped = False
    model.train()
    while state.step < last and not early_stopped:
        idx = batch_for_step(len(rows), train.batch_size, params.seed, state.step)
        batch = encode_batch(tokenizer, cfg, [rows[i]["input"] for i in idx], [rows[i]["target"] for i in idx])
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.accumulate(model):
            loss = model(**batch).loss
            optimizer_step(accelerator, loss, optimizer, scheduler)
        record_step(state, loss, bar, scheduler, mlflow, train.log_every)
        if state.step % train.eval_every == 0 or state.step == train.max_steps:
            value = mean_loss(model, tokenizer, cfg, dev, train.batch_size, accelerator.device)
            state.dev.append((state.step, round(value, 6)))
            if mlflow:
                mlflow.log_metric("dev/loss", value, step=state.step)
            if state.best_step < 0 or value < -state.best_metric:
                state.best_step, state.best_metric, bad_evals = state.step, -value, 0   # best_metric: higher is better
                _save_best(accelerator, model, out_dir)
            else:
                bad_evals += 1
                early_stopped = bad_evals >= train.patience
        if state.step % train.save_every == 0 or state.step == last or early_stopped:
            save_checkpoint(accelerator, out_dir, state, {"bad_evals": bad_evals})
    bar.close()
    summary: dict[str, Any] = {**counts, "train_plans": len(rows), "dev_plans": len(dev),
                               "seconds": round(time.perf_counter() - started, 1), "losses": state.losses,
                               "dev_loss": state.dev, "best_step": state.best_step,
                               "early_stopped": early_stopped, "steps": state.step}
    if state.step < train.max_steps and not early_stopped:
        summary["stopped_at"] = state.step
        return summary
    _finalize(accelerator, model, tokenizer, cfg, out_dir)
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    return summary


def planner_paths(params: Params) -> dict[str, Path]:
    data, models = Path(params.paths.data), Path(params.paths.models)
    return {"sources": data / "sources", "dataset": data / "datasets" / "planner",
            "model": models / "planner", "results": Path(params.paths.results)}


def run_train_planner(params: Params) -> dict[str, Any]:
    """The train_planner stage: one MLflow run, the selected model in models/planner/model."""
    from apex_models.tracking import stage_run

    if params.planner is None:
        raise ValueError("params has no `planner` section: re-run pipelines/compose.py")
    paths = planner_paths(params)
    out = paths["model"]
    with stage_run("train_planner", params, ["planner", "trainer"], data={"dataset": paths["dataset"]}) as mlflow:
        summary = train_planner(params, paths["dataset"], out, mlflow=mlflow)
        summary["mlflow_run_id"] = mlflow.active_run().info.run_id
        for key in ("trainable_params", "train_plans", "seconds", "best_step"):
            mlflow.log_metric(f"summary/{key}", float(summary[key]))
        mlflow.log_artifacts(str(out / "model"), "model")
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    metrics = {k: summary[k] for k in ("train_plans", "trainable_params", "total_params", "seconds", "best_step",
                                       "steps")}
    metrics["final_loss"] = summary["losses"][-1][1]
    metrics["best_dev_loss"] = min(v for _, v in summary["dev_loss"])
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return summary
