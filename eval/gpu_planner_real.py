"""The planner recipe on real weights and real plans on a GPU: does compute close the gap?

    python pipelines/compose.py --profile default --out params-planner.yaml
    python eval/gpu_planner_real.py --params params-planner.yaml --work runs/gpu-planner \\
        --dataset data/datasets/planner --retrieve-dataset data/datasets/planner-retrieve   # on a CUDA machine

The CPU default (100 steps of 8 plans) and the retrieve-then-adapt run (2,000 steps, 51
minutes on 2 cores) both lose to the BM25 nearest-training-plan baseline
(eval/results/planner.json, planner-retrieve.json). Dev loss was still falling when the
CPU budget ran out, so the question this answers is whether the same recipe, given 10-100
times the plans seen, learns to adapt the plan it is shown. Each variant is a set of
dotted overrides on the composed params (the offline default's encoder-decoder, not the
gpu profile's hub LLM, which a machine without a hub cannot load), trained in its own
process on bf16 without DeepSpeed (the model is 33M parameters: ZeRO shards nothing worth
sharding), then scored with `evaluate_planner` on the whole test split, model and baseline
in the same run. MLflow is left out, as in eval/gpu_embedder_real.py.

`--dataset` is the planner dataset as the default builds it (goal and context only);
`--retrieve-dataset` the same plans built with `planner.data.retrieve: true` (each input
carries the BM25-nearest training plan of another unit). Results:
eval/results/gpu-planner-real.json, written after every variant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

COMMON: dict[str, object] = {
    "trainer.device": "cuda", "trainer.mixed_precision": "bf16", "trainer.gradient_checkpointing": False,
    "trainer.deepspeed": None, "planner.eval.test_plans": None, "planner.eval.batch_size": 128,
}
_LONG = {"planner.train.batch_size": 64, "planner.train.max_steps": 2000, "planner.train.eval_every": 200,
         "planner.train.save_every": 1000, "planner.train.patience": 3, "planner.train.dev_plans": 256,
         "planner.train.log_every": 50}
_RETRIEVE = {"planner.data.retrieve": True, "planner.max_source_length": 128,
             "planner.cross_attention_init": "self_attention", "planner.train.lr": 5e-4}
# name -> (dataset: "goal" or "retrieve", dotted overrides); the first is the CPU default as configured
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "cpu_default": ("goal", {}),
    "retrieve_long": ("retrieve", {**_LONG, **_RETRIEVE}),
    "goal_long": ("goal", {**_LONG}),
    "retrieve_long_unfrozen_6l": ("retrieve", {**_LONG, **_RETRIEVE, "planner.freeze_encoder": False,
                                               "planner.decoder_layers": 6}),
}


def run_variant(name: str, params_path: Path, datasets: dict[str, Path], work: Path,
                common: dict[str, object]) -> dict:
    """Train one variant in this process, then score it on the test split beside the baseline."""
    import torch

    from apex_models.config import load_params
    from apex_models.evaluation.planner import evaluate_planner
    from apex_models.training.planner import train_planner
    from apex_models.training.sweep import apply_overrides

    which, overrides = VARIANTS[name]
    params = apply_overrides(load_params(params_path), {**COMMON, **overrides, **common})  # --set has the last word
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    summary = train_planner(params, datasets[which], work / name)
    trained = time.perf_counter() - started
    results = evaluate_planner(params, datasets[which], work / name / "model", progress=False,
                               device="cuda" if cuda else "cpu")
    train = params.planner.train
    return {"variant": name, "dataset": which, "overrides": overrides,
            "test": results["test"], "examples": results["examples"][:3],
            "train_s": round(trained, 1), "eval_s": round(time.perf_counter() - started - trained, 1),
            "s_per_step": round(summary["seconds"] / max(summary["steps"], 1), 4),
            "steps": summary["steps"], "best_step": summary["best_step"], "early_stopped": summary["early_stopped"],
            "dev_loss": summary["dev_loss"], "batch_size": train.batch_size, "lr": train.lr,
            "trainable_params": summary["trainable_params"], "total_params": summary["total_params"],
            "train_plans": summary["train_plans"],
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, required=True, help="composed params (pipelines/compose.py)")
    parser.add_argument("--work", type=Path, required=True, help="folder for each variant's checkpoints and model")
    parser.add_argument("--dataset", type=Path, required=True, help="planner dataset (goal and context)")
    parser.add_argument("--retrieve-dataset", type=Path, help="the same built with planner.data.retrieve: true")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every variant, e.g. planner.base=/models/minilm")
    parser.add_argument("--timeout", type=float, default=None,
                        help="seconds a variant may take before it is stopped and reported as failed")
    parser.add_argument("--out", type=Path, default=Path("eval/results/gpu-planner-real.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from apex_models.training.sweep import parse_sets

    datasets = {"goal": args.dataset, "retrieve": args.retrieve_dataset}
    if args.worker:
        result = run_variant(args.worker, args.params, datasets, args.work, parse_sets(args.set))
        print("RESULT " + json.dumps(result, default=str))
        return 0

    from apex_models.evaluation.results import write_result

    results, failures = {}, {}
    for name in args.variants:
        if VARIANTS[name][0] == "retrieve" and args.retrieve_dataset is None:
            failures[name] = "needs --retrieve-dataset"
            continue
        retrieve = ["--retrieve-dataset", str(args.retrieve_dataset)] if args.retrieve_dataset else []
        cmd = [sys.executable, __file__, "--params", str(args.params), "--work", str(args.work),
               "--dataset", str(args.dataset), *retrieve, "--worker", name, "--set", *args.set]
        try:  # stderr (progress, errors) passes through
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=os.environ.copy(), timeout=args.timeout)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            code = proc.returncode
        except subprocess.TimeoutExpired:
            lines, code = [], f"timeout after {args.timeout} s"
        if code or not lines:
            failures[name] = f"exit {code}; its traceback, if any, is in the output above"
            print(f"[gpu-planner] {name} failed ({failures[name]})", file=sys.stderr, flush=True)
        else:
            r = results[name] = json.loads(lines[-1].removeprefix("RESULT "))
            m, b = r["test"]["model"], r["test"]["retrieval_bm25"]
            print(f"[gpu-planner] {name}: ROUGE-L {m['rouge_l']} (baseline {b['rouge_l']}), step recall "
                  f"{m['step_recall']} ({b['step_recall']}), {r['steps']} steps at {r['s_per_step']} s, best "
                  f"{r['best_step']}, dev {r['dev_loss'][-3:]}", flush=True)
        # after every variant, so a run cut short keeps what finished
        write_result(args.out, "planner recipe on real weights and plans, bf16 on a GPU", results,
                     extra={"failures": failures, "common_overrides": {**COMMON, **parse_sets(args.set)}})
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
