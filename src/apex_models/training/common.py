"""What every recipe shares: accelerator set-up, the LR schedule, and checkpoints that resume exactly.

Each recipe (embedder, intent classifier, ranker) keeps its own loop; only the logic that
is truly the same lives here, so a fix to checkpointing reaches every model at once.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from apex_models.config import TrainerConfig

CHECKPOINTS = "checkpoints"
KEEP_CHECKPOINTS = 2


@dataclass
class TrainState:
    """What a checkpoint must carry besides the tensors."""

    step: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    dev: list[tuple[int, float]] = field(default_factory=list)
    best_step: int = -1
    best_metric: float = -1.0

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "losses": self.losses, "dev": self.dev,
                "best_step": self.best_step, "best_metric": self.best_metric}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TrainState":
        return cls(step=data["step"], losses=[tuple(x) for x in data["losses"]],
                   dev=[tuple(x) for x in data["dev"]], best_step=data["best_step"],
                   best_metric=data["best_metric"])


def batch_for_step(n: int, batch_size: int, seed: int, step: int) -> list[int]:
    """Indices of a global step: each epoch a seeded permutation of `n`, cut into full batches.

    A pure function of (seed, step), so a resumed run sees the batches an uninterrupted one would.
    """
    import numpy as np

    per_epoch = n // batch_size
    if per_epoch == 0:
        raise ValueError(f"{n} examples cannot fill one batch of {batch_size}")
    epoch, k = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return order[k * batch_size:(k + 1) * batch_size].tolist()


def single_process_env() -> None:
    """DeepSpeed's init wants a launcher's env; set a one-process world when absent."""
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}.items():
        os.environ.setdefault(key, value)


def make_accelerator(trainer: TrainerConfig, grad_accum: int, micro_batch_size: int):
    """An Accelerator for the trainer config (CPU/CUDA, precision, optional DeepSpeed ZeRO)."""
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    plugin = None
    if trainer.deepspeed is not None:
        single_process_env()
        ds = trainer.deepspeed
        plugin = DeepSpeedPlugin(zero_stage=ds.zero_stage, gradient_accumulation_steps=grad_accum,
                                 gradient_clipping=ds.gradient_clipping,
                                 offload_optimizer_device=ds.offload_optimizer_device,
                                 offload_param_device=ds.offload_param_device)
        plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch_size
    # cpu=True would make accelerate drop the DeepSpeed plugin (it falls back to DDP) without a
    # word; left False, DeepSpeed runs on its own CPU accelerator where no GPU is present.
    return Accelerator(mixed_precision=trainer.mixed_precision, cpu=trainer.device == "cpu" and plugin is None,
                       gradient_accumulation_steps=grad_accum, deepspeed_plugin=plugin)


def warmup_linear(max_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """LR multiplier: linear warm-up over `warmup_ratio` of the steps, then linear decay to 0."""
    warmup = int(warmup_ratio * max_steps)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (max_steps - step) / max(1, max_steps - warmup))

    return schedule


def fingerprint(config: dict[str, Any], data_files: list[Path]) -> str:
    """What a checkpoint must match to be resumed: the recipe's config and its data."""
    from apex_models.hashing import sha256_bytes, sha256_file

    doc = {**config, "data": [sha256_file(p) for p in data_files]}
    if len(data_files) == 1:  # the embedder's historical form, kept so its fingerprints stay stable
        doc["data"] = doc["data"][0]
    return sha256_bytes(json.dumps(doc, sort_keys=True).encode())


def latest_checkpoint(out_dir: Path, run_fingerprint: str, best_dir: str = "best_adapter") -> Path | None:
    """The newest complete checkpoint of this same run; stale ones (other config) are removed."""
    root = out_dir / CHECKPOINTS
    marker = root / "fingerprint.txt"
    if root.exists() and (not marker.is_file() or marker.read_text() != run_fingerprint):
        shutil.rmtree(root)
        shutil.rmtree(out_dir / best_dir, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    marker.write_text(run_fingerprint)
    done = sorted((p for p in root.glob("step-*") if (p / "train_state.json").is_file()),
                  key=lambda p: int(p.name.split("-")[1]))
    return done[-1] if done else None


def save_checkpoint(accelerator, out_dir: Path, state: TrainState, extra: dict[str, Any] | None = None) -> None:
    """Write to a temp folder and rename, so a crash never leaves a half checkpoint.

    `extra` is recipe state that is not a tensor (e.g. early-stopping counters), stored
    beside the train state and returned by :func:`load_checkpoint`.
    """
    root = out_dir / CHECKPOINTS
    final = root / f"step-{state.step}"
    tmp = root / f".tmp-step-{state.step}"
    shutil.rmtree(tmp, ignore_errors=True)
    accelerator.save_state(str(tmp))
    (tmp / "train_state.json").write_text(json.dumps(state.to_json()))
    if extra is not None:
        (tmp / "extra.json").write_text(json.dumps(extra))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    older = sorted((p for p in root.glob("step-*") if p != final), key=lambda p: int(p.name.split("-")[1]))
    for stale in older[:-(KEEP_CHECKPOINTS - 1) or None]:
        shutil.rmtree(stale, ignore_errors=True)


def load_checkpoint(accelerator, checkpoint: Path) -> tuple[TrainState, dict[str, Any]]:
    """Restore model/optimizer/scheduler/RNG and return the train state and recipe extras."""
    accelerator.load_state(str(checkpoint))
    state = TrainState.from_json(json.loads((checkpoint / "train_state.json").read_text()))
    extra_file = checkpoint / "extra.json"
    extra = json.loads(extra_file.read_text()) if extra_file.is_file() else {}
    return state, extra


def optimizer_step(accelerator, loss, optimizer, scheduler) -> None:
    """Backward, step the optimizer and the schedule, clear gradients (inside `accumulate`).

    `loss` None: the gradients are already in place (a cached loss back-propagates in
    pieces itself), so only the update runs.
    """
    if loss is not None:
        accelerator.backward(loss)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()


def piece_backward(accelerator) -> Callable[[Any, bool], None]:
    """`backward(tensor, last)` for a loss that back-propagates one batch in pieces (GradCache).

    Under DeepSpeed, ``accelerator.backward`` ends each call with an optimizer step when
    gradients sync, so every piece of one batch would take its own step on a partial
    gradient; here only the `last` piece marks the accumulation boundary. Elsewhere
    gradients add up in ``.grad`` and the caller steps once, as usual.
    """
    from accelerate.utils import DistributedType

    def backward(tensor, last: bool) -> None:
        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            accelerator.deepspeed_engine_wrapped.backward(tensor, sync_gradients=last and accelerator.sync_gradients)
        else:
            accelerator.backward(tensor)

    return backward


def record_step(state: TrainState, loss, bar, scheduler, mlflow=None, log_every: int = 1) -> float:
    """Count the step, refuse a non-finite loss, keep it for the curve, show and log it.

    Every recipe ends a step the same way; a NaN must stop the run at once, not after
    hours of training on garbage.
    """
    state.step += 1
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"loss became {value} at step {state.step}; lower the learning rate")
    state.losses.append((state.step, round(value, 6)))
    bar.update(1)
    bar.set_postfix(loss=f"{value:.4f}")
    if mlflow and state.step % log_every == 0:
        mlflow.log_metric("train/loss", value, step=state.step)
        mlflow.log_metric("train/lr", scheduler.get_last_lr()[0], step=state.step)
    return value


def resume(accelerator, out_dir: Path, run_fingerprint: str, extra: dict | None = None,
           best_dir: str = "best_adapter") -> tuple[TrainState, dict, bool]:
    """(state, extra, resumed): the newest checkpoint of this same run when there is one (stale
    ones are removed), else a fresh state and `extra` as given."""
    latest = latest_checkpoint(out_dir, run_fingerprint, best_dir=best_dir)
    if latest is None:
        return TrainState(), dict(extra or {}), False
    state, saved = load_checkpoint(accelerator, latest)
    accelerator.print(f"[train] resumed from {latest.name}")
    return state, {**(extra or {}), **saved}, True


def record_base(state: TrainState, metric: float, name: str, model, out_dir: Path, accelerator, mlflow=None) -> None:
    """Make the untouched model (step 0) the first selection candidate, with its dev score.

    LoRA's B matrices start at zero (and a residual head at zero), so the adapter saved
    here merges to exactly the base: a run that only makes dev worse ships the base."""
    state.best_metric, state.best_step = metric, 0
    accelerator.unwrap_model(model).save_pretrained(out_dir / "best_adapter")
    accelerator.print(f"[train] step 0 dev {name} {metric:.4f}")
    if mlflow:
        mlflow.log_metric(f"dev/{name}", metric, step=0)


def record_dev(state: TrainState, extra: dict, metric: float, name: str, model, out_dir: Path,
               patience: int | None, accelerator, mlflow=None) -> bool:
    """Keep a dev evaluation: on the curve, in MLflow as `dev/<name>`, and the adapter when it
    is the best so far. Returns True once `patience` evaluations in a row did not improve
    (early stopping; None: never); `extra["bad_evals"]` carries that count through checkpoints."""
    state.dev.append((state.step, round(metric, 6)))
    accelerator.print(f"[train] step {state.step} dev {name} {metric:.4f}")
    if mlflow:
        mlflow.log_metric(f"dev/{name}", metric, step=state.step)
    if metric > state.best_metric:
        state.best_metric, state.best_step = metric, state.step
        extra["bad_evals"] = 0
        accelerator.unwrap_model(model).save_pretrained(out_dir / "best_adapter")
        return False
    extra["bad_evals"] += 1
    return patience is not None and extra["bad_evals"] >= patience


def prepare_training(model, train, trainer: TrainerConfig, micro_batch_size: int):
    """AdamW on the trainable (LoRA and head) parameters, warm-up then linear decay, all
    wrapped by accelerate. Returns (model, optimizer, scheduler, accelerator, counts)."""
    import torch

    trainable = [p for p in model.parameters() if p.requires_grad]
    counts = {"trainable_params": sum(p.numel() for p in trainable),
              "total_params": sum(p.numel() for p in model.parameters())}
    optimizer = torch.optim.AdamW(trainable, lr=train.lr, weight_decay=train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_linear(train.max_steps, train.warmup_ratio))
    accelerator = make_accelerator(trainer, train.grad_accum, micro_batch_size)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    return model, optimizer, scheduler, accelerator, counts


def save_selected(accelerator, model, tokenizer, out_dir: Path, state: TrainState, best_dir: str = "best_adapter"):
    """Load the adapter of the best dev step (if not the last), save it, and save the
    merged plain model with its tokenizer. Returns the merged model."""
    final = accelerator.unwrap_model(model)
    if state.best_step >= 0 and state.best_step != state.step:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        set_peft_model_state_dict(final, load_file(str(out_dir / best_dir / "adapter_model.safetensors")))
    final.save_pretrained(out_dir / "adapter")
    merged = final.merge_and_unload()
    merged.save_pretrained(out_dir / "merged")
    tokenizer.save_pretrained(out_dir / "merged")
    return merged


def with_lora(model, lora, trainer: TrainerConfig, modules_to_save: tuple[str, ...] = ()):
    """Wrap a transformers model with a PEFT LoRA adapter (config section `lora`), and turn
    on gradient checkpointing when the trainer asks. `modules_to_save` are trained fully
    (a fresh classification head must be)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules), bias="none",
                        layers_to_transform=list(lora.layers) if getattr(lora, "layers", None) else None,
                        modules_to_save=list(modules_to_save) or None)
    model = get_peft_model(model, config)
    if trainer.gradient_checkpointing:
        model.enable_input_require_grads()
        model.gradient_checkpointing_enable()
    return model
