"""A Ray Tune sweep over the embedder recipe, each trial one MLflow run nested under the sweep's.

The trial is the very recipe the train_embedder stage runs (:func:`train_embedder`) with
the sampled values written into a copy of the resolved config, so a winning trial's
values are a plain override of conf/ (``python pipelines/compose.py ... embedder.lora.r=32``)
and nothing differs between a sweep and a real run but the numbers. The search space,
trial count, concurrency and scheduler come from the ``sweep`` config group.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from apex_models.config import Params, SweepParam


def tune_space(space: dict[str, SweepParam]) -> dict[str, Any]:
    """The config's search space as Ray Tune sampling objects, keyed by dotted config key."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, p in space.items():
        if p.type == "choice":
            out[key] = tune.choice(p.values)
        elif p.type == "grid":
            out[key] = tune.grid_search(p.values)
        elif p.type == "loguniform":
            out[key] = tune.loguniform(p.low, p.high)
        else:
            out[key] = tune.uniform(p.low, p.high)
    return out


def parse_sets(items: list[str]) -> dict[str, object]:
    """`key=value` pairs (the eval scripts' `--set`) as overrides for `apply_overrides`; values are
    read as YAML (numbers, booleans, null, lists)."""
    import yaml

    pairs = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes key=value, got {item!r}")
        pairs[key] = yaml.safe_load(value)
    return pairs


def apply_overrides(params: Params, values: dict[str, Any]) -> Params:
    """A validated copy of `params` with dotted keys set (``embedder.lora.r`` -> 32).

    An unknown key fails here, before any training, with the key's name.
    """
    doc = copy.deepcopy(params.model_dump(mode="json"))
    for key, value in values.items():
        node = doc
        *parents, leaf = key.split(".")
        for part in parents:
            if not isinstance(node, dict) or part not in node:
                raise KeyError(f"sweep key {key!r}: no {part!r} in the config")
            node = node[part]
        if leaf not in node:
            raise KeyError(f"sweep key {key!r}: no {leaf!r} in the config")
        node[leaf] = value
    return Params.model_validate(doc)


def _trial(config: dict[str, Any], *, params_json: dict[str, Any], train_path: str, dev_dir: str | None,
           sources_dir: str | None, out_root: str, tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
    """One trial (runs in a Ray worker): the recipe in a nested MLflow run, reporting its dev metric."""
    import mlflow
    from ray import tune

    from apex_models.training.embedder import train_embedder

    params = apply_overrides(Params.model_validate(params_json), config)
    name = "-".join(f"{k.split('.')[-1]}={v:.3g}" if isinstance(v, float) else f"{k.split('.')[-1]}={v}"
                    for k, v in sorted(config.items()))
    out_dir = Path(out_root) / name
    mlflow.set_tracking_uri(tracking_uri)
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"trial {name}", parent_run_id=parent_run_id,
                          tags={"stage": "sweep_embedder_trial", "profile": params.profile}):
        mlflow.log_params({"seed": params.seed, **{k: str(v) for k, v in config.items()}})
        summary = train_embedder(params, Path(train_path), Path(dev_dir) if dev_dir else None, out_dir,
                                 mlflow=mlflow, sources_dir=Path(sources_dir) if sources_dir else None)
        best = summary.get("best_dev_mrr@10")
        metrics = {"best_dev_mrr@10": best if best is not None else float("nan"),
                   "final_loss": summary["losses"][-1][1], "seconds": summary["seconds"]}
        mlflow.log_metrics({k.replace("@", "_at_"): float(v) for k, v in metrics.items()})
        metrics["mlflow_run_id"] = mlflow.active_run().info.run_id
    tune.report(metrics)


def run_sweep(params: Params, train_path: Path, dev_dir: Path | None, sources_dir: Path | None,
              out_root: Path, mlflow) -> dict[str, Any]:
    """Run the sweep inside the active MLflow run (the parent); return every trial and the best.

    Ray must already be initialised by the caller (how many CPUs is the caller's call).
    """
    from ray import tune

    sweep = params.sweep
    if sweep is None:
        raise ValueError("params has no `sweep` section: re-run `python pipelines/compose.py`")
    space = tune_space(sweep.space)
    for key in sweep.space:  # fail on a bad key now, not in every worker
        apply_overrides(params, {key: sweep.space[key].values[0] if sweep.space[key].values
                                 else sweep.space[key].low})
    parent = mlflow.active_run()
    tracking_uri = mlflow.get_tracking_uri()
    if tracking_uri.startswith("sqlite:///") and not tracking_uri.startswith("sqlite:////"):
        tracking_uri = "sqlite:///" + str(Path(tracking_uri.removeprefix("sqlite:///")).resolve())
    trainable = tune.with_parameters(
        _trial, params_json=params.model_dump(mode="json"), train_path=str(Path(train_path).resolve()),
        dev_dir=str(Path(dev_dir).resolve()) if dev_dir else None,
        sources_dir=str(Path(sources_dir).resolve()) if sources_dir else None,
        out_root=str(Path(out_root).resolve()), tracking_uri=tracking_uri,
        experiment_id=parent.info.experiment_id, parent_run_id=parent.info.run_id)
    trainable = tune.with_resources(trainable, {"cpu": sweep.cpus_per_trial})
    storage = Path(out_root).resolve() / "ray"
    tuner = tune.Tuner(
        trainable, param_space=space,
        tune_config=tune.TuneConfig(num_samples=sweep.num_samples, max_concurrent_trials=sweep.max_concurrent,
                                    metric=sweep.metric, mode=sweep.mode),
        run_config=tune.RunConfig(name="sweep_embedder", storage_path=str(storage), verbose=1))
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    grid = tuner.fit()
    trials = []
    for result in grid:
        if result.error:
            raise RuntimeError(f"a sweep trial failed: {result.error}")
        m = result.metrics
        trials.append({"config": result.config, sweep.metric: m.get(sweep.metric),
                       "final_loss": m.get("final_loss"), "seconds": m.get("seconds"),
                       "mlflow_run_id": m.get("mlflow_run_id")})
    sign = 1.0 if sweep.mode == "max" else -1.0

    def score(trial: dict[str, Any]) -> float:  # a trial without the metric (no dev set) ranks last
        value = trial[sweep.metric]
        return float("-inf") if value is None or value != value else sign * float(value)

    ranked = sorted(trials, key=score, reverse=True)
    best = ranked[0]
    mlflow.log_dict({"trials": trials, "best": best}, "sweep.json")
    mlflow.log_params({f"best.{k}": str(v) for k, v in best["config"].items()})
    if best[sweep.metric] is not None:
        mlflow.log_metric(f"best_{sweep.metric}".replace("@", "_at_"), float(best[sweep.metric]))
    return {"metric": sweep.metric, "mode": sweep.mode, "trials": ranked, "best": best}


def run_sweep_stage(params: Params) -> dict[str, Any]:
    """pipelines/sweep_embedder.py: the sweep on the pipeline's data, results in eval/results/."""
    import ray

    from apex_models.evaluation.results import write_result
    from apex_models.layout import layout
    from apex_models.tracking import stage_run

    lay = layout(params)
    dev = lay.benchmark("cosqa-dev")
    if not (dev / "corpus.jsonl").is_file():
        dev = None
    train = lay.embedder_data / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"{train} not found: run `dvc repro datasets` first")
    cpus = max(int(params.sweep.cpus_per_trial * params.sweep.max_concurrent), 1) if params.sweep else 1
    ray.init(num_cpus=cpus, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    try:
        with stage_run("sweep_embedder", params, ["embedder", "trainer", "sweep"],
                       data={"datasets/embedder": lay.embedder_data, "sources": lay.sources}) as mlflow:
            result = run_sweep(params, train, dev, lay.sources, Path(params.paths.models) / "sweep" / "embedder",
                               mlflow)
            result["mlflow_run_id"] = mlflow.active_run().info.run_id
    finally:
        ray.shutdown()
    write_result(lay.results / "sweep-embedder.json", "embedder sweep (Ray Tune)", result,
                 command="python pipelines/sweep_embedder.py", extra={"profile": params.profile})
    print(json.dumps({"best": result["best"]}, default=str))
    return result
