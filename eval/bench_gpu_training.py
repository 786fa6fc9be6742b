"""Training throughput of the `gpu` profile: tokens/s, MFU and step time per workload.

    python pipelines/compose.py --profile gpu --out params-gpu.yaml
    python eval/bench_gpu_training.py --params params-gpu.yaml          # on a CUDA machine

Each workload is one training step of a recipe exactly as the profile configures it
(`trainer`: bf16, DeepSpeed ZeRO-2, gradient checkpointing; LoRA from the model's own
section), built from the recipes' own pieces (`with_lora`, `prepare_training`,
`cached_info_nce`, `piece_backward`, `optimizer_step`):

  codebert       the embedder step (GradCache InfoNCE; batch, mini-batch, lengths and hard
                 negatives from `embedder.train`) on a RoBERTa-base-shaped encoder, the shape
                 of microsoft/codebert-base;
  codebert_fp32  the same step in fp32 without DeepSpeed: the baseline of the speed ratio;
  codebert_bf16  bf16 without DeepSpeed: what ZeRO-2 costs or saves on one GPU;
  codebert_zero3 the same step under ZeRO-3 (`trainer=gpu_bf16_zero3`);
  minilm         the same step on the default base's shape (a 6 x 384 BERT);
  planner        the causal-LM planner step (`planner.train.batch_size` x source + target
                 tokens, LoRA) on a Qwen2.5-Coder-0.5B-shaped decoder.

The weights are random (no hub is reachable from a lent GPU; speed depends on shapes,
not values) and every sequence is full length, so tokens/s counts every position. Each
workload runs in its own process (accelerate's state is one per process).

MFU = model FLOPs per second / the GPU's dense bf16 peak. Model FLOPs per token of a LoRA
step: 2N forward + 2N backward through the activations (frozen weights get no weight
gradient) + the attention products, 4·L·s·d forward and twice that backward; N counts the
weights of every Linear layer a token passes (LoRA adapters excluded). Recomputation
(GradCache's gradient-free first pass, activation checkpointing) is real work but not
model work, so it lowers MFU; `hfu` counts it. Results: eval/results/gpu-training.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORKLOADS = ("codebert", "codebert_fp32", "codebert_bf16", "minilm", "planner", "codebert_zero3")
# dense bf16 tensor-core peaks (no sparsity), FLOP/s; matched on the CUDA device name
PEAK_BF16 = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}


def _shape(workload: str, small: bool):
    """The model of a workload, random weights; `small` keeps one layer (a CPU check of this script)."""
    from transformers import AutoModel, AutoModelForCausalLM, BertConfig, Qwen2Config, RobertaConfig

    layers = {"num_hidden_layers": 1} if small else {}
    if workload.startswith("codebert"):   # roberta-base: 12 x 768, 12 heads, 3072 FFN, 50265 tokens
        return AutoModel.from_config(RobertaConfig(vocab_size=50265, max_position_embeddings=514, type_vocab_size=1,
                                                   layer_norm_eps=1e-5, **layers))
    if workload == "minilm":            # all-MiniLM-L6-v2: 6 x 384, 12 heads, 1536 FFN
        return AutoModel.from_config(BertConfig(hidden_size=384, num_hidden_layers=1 if small else 6,
                                                num_attention_heads=12, intermediate_size=1536))
    # Qwen2.5-Coder-0.5B: 24 x 896, 14 query / 2 key-value heads, 4864 FFN, tied 151936-token head
    return AutoModelForCausalLM.from_config(Qwen2Config(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=1 if small else 24,
        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, tie_word_embeddings=True))


def linear_weights(model) -> int:
    """N: weights of the Linear layers every token passes (LoRA adapters and the pooler excluded)."""
    import torch

    return sum(m.weight.numel() for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and "lora_" not in name and "pooler" not in name)


def step_flops(n_linear: int, layers: int, width: int, sequences: list[tuple[int, int]]) -> float:
    """Model FLOPs of one LoRA training step over `sequences` = [(count, length)]."""
    total = 0.0
    for count, length in sequences:
        tokens = count * length
        attention = 4 * layers * length * width * tokens     # QK^T and AV, forward
        total += 4 * n_linear * tokens + 3 * attention
    return total


def run_workload(workload: str, params_path: Path, steps: int, warmup: int, small: bool) -> dict:
    """Time `steps` steps after `warmup` of one workload in this process."""
    import torch

    from apex_models.config import load_params
    from apex_models.models.embedder import embed_batch
    from apex_models.training.common import optimizer_step, piece_backward, prepare_training, with_lora
    from apex_models.training.contrastive import cached_info_nce, info_nce
    from apex_models.training.seed import set_seed

    params = load_params(params_path)
    trainer = params.trainer
    if workload == "codebert_fp32":
        trainer = trainer.model_copy(update={"mixed_precision": "no", "deepspeed": None})
    elif workload == "codebert_bf16":
        trainer = trainer.model_copy(update={"deepspeed": None})
    elif workload == "codebert_zero3" and trainer.deepspeed is not None:
        trainer = trainer.model_copy(update={"deepspeed": trainer.deepspeed.model_copy(update={"zero_stage": 3})})
    if small and not torch.cuda.is_available():
        trainer = trainer.model_copy(update={"device": "cpu", "mixed_precision": "no"})
    set_seed(params.seed)
    base = _shape(workload, small)
    config = base.config
    n_linear = linear_weights(base)
    g = torch.Generator().manual_seed(params.seed)

    def tokens(count: int, length: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(1000, min(config.vocab_size, 30000), (count, length), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    if workload == "planner":
        cfg, train = params.planner, params.planner.train
        batch = train.batch_size // 8 if small else train.batch_size
        length = cfg.max_source_length + cfg.max_target_length
        model = with_lora(base, cfg.lora, trainer)
        model, optimizer, scheduler, accelerator, counts = prepare_training(model, train, trainer, batch)
        sequences = [(batch, length)]

        def step() -> float:
            inputs = {k: v.to(accelerator.device) for k, v in tokens(batch, length).items()}
            with accelerator.accumulate(model):
                loss = model(**inputs, labels=inputs["input_ids"]).loss
                optimizer_step(accelerator, loss, optimizer, scheduler)
            return float(loss.detach())
        recompute = 1.0 if trainer.gradient_checkpointing else 0.0   # forwards repeated per step
    else:
        cfg, train = params.embedder, params.embedder.train
        batch = train.batch_size // 16 if small else train.batch_size
        mini = max(1, train.mini_batch_size // 16) if small else train.mini_batch_size
        docs = batch * (1 + train.hard_negatives)
        model = with_lora(base, cfg.lora, trainer)
        model, optimizer, scheduler, accelerator, counts = prepare_training(model, train, trainer, docs)
        sequences = [(batch, cfg.query_max_length), (docs, train.doc_max_length)]

        def embed(inputs):
            return embed_batch(model, inputs["input_ids"].to(accelerator.device),
                               inputs["attention_mask"].to(accelerator.device), cfg.pooling, cfg.normalize)

        def step() -> float:
            q, d = tokens(batch, cfg.query_max_length), tokens(docs, train.doc_max_length)
            with accelerator.accumulate(model):
                if mini and mini < docs:
                    loss = cached_info_nce(embed, q, d, 1.0 / train.temperature, mini, piece_backward(accelerator))
                    optimizer_step(accelerator, None, optimizer, scheduler)
                else:
                    loss = info_nce(embed(q), embed(d), 1.0 / train.temperature)
                    optimizer_step(accelerator, loss, optimizer, scheduler)
            return float(loss)
        cached = bool(mini and mini < docs)
        recompute = (1.0 if cached else 0.0) + (1.0 if trainer.gradient_checkpointing else 0.0)

    cuda = accelerator.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    model.train()
    losses, times = [], []
    for i in range(warmup + steps):
        sync()
        started = time.perf_counter()
        losses.append(step())
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    step_s = statistics.median(times)
    n_tokens = sum(c * n for c, n in sequences)
    layers, width = config.num_hidden_layers, config.hidden_size
    flops = step_flops(n_linear, layers, width, sequences)
    forward = sum(c * n * (2 * n_linear + 4 * layers * n * width) for c, n in sequences)
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in device_name), None)
    return {
        "workload": workload, "device": device_name, "trainer": trainer.model_dump(mode="json"),
        "model": {"layers": layers, "hidden": width, "linear_weights": n_linear, **counts},
        "tokens_per_step": n_tokens, "sequences": sequences,
        "step_s_median": round(step_s, 4), "step_s_all": [round(t, 4) for t in times],
        "tokens_per_s": round(n_tokens / step_s, 1),
        "model_tflops_per_s": round(flops / step_s / 1e12, 2),
        "mfu": round(flops / step_s / peak, 4) if peak else None,
        "hfu": round((flops + recompute * forward) / step_s / peak, 4) if peak else None,
        "peak_bf16_tflops": peak and peak / 1e12,
        "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "losses": [round(x, 4) for x in losses],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=Path("params-gpu.yaml"),
                        help="a composed gpu profile (pipelines/compose.py --profile gpu --out ...)")
    parser.add_argument("--workloads", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    parser.add_argument("--steps", type=int, default=10, help="timed steps per workload (median reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, kernels, DeepSpeed)")
    parser.add_argument("--small", action="store_true", help="one layer, smaller batches: a quick check of this script")
    parser.add_argument("--out", type=Path, default=Path("eval/results/gpu-training.json"))
    parser.add_argument("--worker", choices=WORKLOADS, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:   # one workload, in a process of its own; the parent reads the last line
        print(json.dumps(run_workload(args.worker, args.params, args.steps, args.warmup, args.small)))
        return 0

    from apex_models.evaluation.results import write_result

    results, failures = {}, {}
    for workload in args.workloads:
        command = [sys.executable, __file__, "--worker", workload, "--params", str(args.params),
                   "--steps", str(args.steps), "--warmup", str(args.warmup), *(["--small"] if args.small else [])]
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            failures[workload] = done.stderr[-3000:]
            print(f"[gpu-bench] {workload} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
            continue
        results[workload] = {**json.loads(lines[-1]), "process_s": round(time.perf_counter() - started, 1)}
        r = results[workload]
        print(f"[gpu-bench] {workload}: {r['step_s_median']} s/step, {r['tokens_per_s']:.0f} tokens/s, "
              f"{r['model_tflops_per_s']} TFLOP/s, MFU {r['mfu']}, {r['max_memory_gib']} GiB", flush=True)
    for name in ("codebert", "codebert_bf16", "codebert_zero3"):
        if name in results and "codebert_fp32" in results:
            results[name]["speedup_vs_fp32"] = round(
                results[name]["tokens_per_s"] / results["codebert_fp32"]["tokens_per_s"], 2)
    write_result(args.out, "gpu profile training throughput", results,
                 command="python eval/bench_gpu_training.py " + " ".join(sys.argv[1:]),
                 extra={"failures": failures, "small": args.small})
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
