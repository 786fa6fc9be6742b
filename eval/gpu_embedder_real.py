"""The embedder recipe on real weights and real data under the `gpu` profile, a few variants.

    python pipelines/compose.py --profile gpu --out params-gpu.yaml embedder.base=/models/minilm
    python eval/gpu_embedder_real.py --params params-gpu.yaml --work runs/gpu-embedder   # on a CUDA machine

`eval/bench_gpu_training.py` times single steps on random weights; this runs the whole
`train_embedder` recipe (mining, bf16 + DeepSpeed ZeRO-2 through accelerate, GradCache,
dev selection on CoSQA dev, the merge) on the pipeline's own training data, so it answers
what step timings cannot: does more compute (large in-batch negative sets, many epochs)
move CoSQA dev MRR@10 above the un-tuned base, which the CPU default's 200 steps of 32
pairs did not (0.530 vs 0.534)?

Each variant is a set of dotted overrides on the composed params, run in its own process
(accelerate's state is one per process). MLflow is left out: the `train_embedder` stage
wraps this same function in a run; a lent GPU machine has no MLflow to log to. The
selected adapters land in `<work>/<variant>/adapter`; score the chosen one on CoSQA test
with `pipelines/evaluate_embedder.py` after merging it on the CPU (the test split is
never read here). Results: eval/results/gpu-embedder-real.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

# name -> dotted overrides of the composed params; the first is the profile as configured
VARIANTS: dict[str, dict[str, object]] = {
    "profile": {},
    "lr1e-5": {"embedder.train.lr": 1e-5},
    "conala_heavy": {"embedder.train.lr": 2e-5,
                     "embedder.data.mix": {"docstring": 0.1, "docstring_query": 0.3, "conala": 0.6}},
    "no_hard_negatives": {"embedder.train.lr": 2e-5, "embedder.train.hard_negatives": 0},
}


def run_variant(name: str, params_path: Path, work: Path, common: dict[str, object]) -> dict:
    """Train one variant in this process; the recipe's summary plus what the GPU used."""
    import torch

    from apex_models.config import load_params
    from apex_models.layout import layout
    from apex_models.training.embedder import train_embedder
    from apex_models.training.sweep import apply_overrides

    params = apply_overrides(load_params(params_path), {**common, **VARIANTS[name]})
    lay = layout(params)
    dev = lay.benchmark("cosqa-dev")
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    summary = train_embedder(params, lay.embedder_data / "train", dev, work / name, sources_dir=lay.sources)
    train = params.embedder.train
    return {"variant": name, "overrides": VARIANTS[name], **summary,
            "wall_s": round(time.perf_counter() - started, 1),
            "steps": train.max_steps, "batch_size": train.batch_size, "hard_negatives": train.hard_negatives,
            "lr": train.lr, "trainer": params.trainer.model_dump(mode="json"),
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, required=True, help="composed params (pipelines/compose.py)")
    parser.add_argument("--work", type=Path, required=True, help="folder for each variant's checkpoints and adapter")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides for every variant, e.g. embedder.train.max_steps=150")
    parser.add_argument("--out", type=Path, default=Path("eval/results/gpu-embedder-real.json"))
    parser.add_argument("--parallel", action="store_true",
                        help="run the variants side by side on one GPU (each logs to <work>/<variant>.log)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    from apex_models.training.sweep import parse_sets

    if args.worker:
        print("RESULT " + json.dumps(run_variant(args.worker, args.params, args.work, parse_sets(args.set)), default=str))
        return 0

    from apex_models.evaluation.results import write_result

    results, failures = {}, {}

    def finish(name: str, returncode: int, stdout: str) -> None:
        lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
        if returncode or not lines:
            failures[name] = f"exit code {returncode}; its traceback is in the output above"
            print(f"[gpu-embedder] {name} failed ({failures[name]})", file=sys.stderr, flush=True)
        else:
            r = results[name] = json.loads(lines[-1].removeprefix("RESULT "))
            print(f"[gpu-embedder] {name}: base dev {r['base_dev_mrr@10']}, best {r['best_dev_mrr@10']} "
                  f"at step {r['best_step']}, curve {r['dev']}, {r['wall_s']} s", flush=True)
        # after every variant, so a run cut short keeps what finished
        write_result(args.out, "embedder recipe on real weights and data, gpu profile", results,
                     extra={"failures": failures, "common_overrides": parse_sets(args.set),
                            "parallel": args.parallel})

    def command(name: str) -> list[str]:
        return [sys.executable, __file__, "--params", str(args.params), "--work", str(args.work),
                "--worker", name, "--set", *args.set]

    if not args.parallel:
        for name in args.variants:
            proc = subprocess.run(command(name), stdout=subprocess.PIPE, text=True,
                                  env=os.environ.copy())  # stderr (progress, errors) passes through
            finish(name, proc.returncode, proc.stdout)
        return 1 if failures else 0

    # All variants at once on the one GPU (each takes a few GiB and spends most of a step
    # waiting on kernel launches and CPU-side mining, so they overlap well). Each process
    # is its own one-process DeepSpeed world, so each needs its own rendezvous port; its
    # output goes to <work>/<variant>.log rather than interleaving on the terminal.
    args.work.mkdir(parents=True, exist_ok=True)
    running = {}
    for i, name in enumerate(args.variants):
        out, log = args.work / f"{name}.out", args.work / f"{name}.log"
        env = {**os.environ, "MASTER_PORT": str(29511 + i)}
        with open(out, "w") as stdout, open(log, "w") as stderr:
            running[name] = subprocess.Popen(command(name), stdout=stdout, stderr=stderr, text=True, env=env)
        print(f"[gpu-embedder] {name} started, log {log}", flush=True)
    while running:  # report each as it ends, so a run cut short keeps what finished
        time.sleep(2)
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            if proc.returncode:
                print((args.work / f"{name}.log").read_text()[-3000:], file=sys.stderr, flush=True)
            finish(name, proc.returncode, (args.work / f"{name}.out").read_text())
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
