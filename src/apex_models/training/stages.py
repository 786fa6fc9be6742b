"""The train_embedder stage: the recipe inside one MLflow run, plus DVC metrics/plots."""

from __future__ import annotations

import csv
import json
from typing import Any

from apex_models.config import Params
from apex_models.layout import layout
from apex_models.tracking import stage_run
from apex_models.training.embedder import train_embedder


def run_train_embedder(params: Params) -> dict[str, Any]:
    lay = layout(params)
    dev = lay.benchmark("cosqa-dev")
    if not (dev / "corpus.jsonl").is_file():  # no shared/: no selection, the last step ships
        dev = None
    out = lay.embedder_model
    with stage_run("train_embedder", params, ["embedder", "trainer"],
                   data={"datasets/embedder": lay.embedder_data, "sources": lay.sources}) as mlflow:
        summary = train_embedder(params, lay.embedder_data / "train", dev, out, mlflow=mlflow,
                                 sources_dir=lay.sources)
        for name, count in summary["mix"].items():
            mlflow.log_metric(f"data/pairs/{name}", float(count))
        if summary["mining"]:  # how many hard-negative candidates each false-negative filter dropped
            mlflow.log_metrics({f"data/mining/skipped_{k}": float(v) for k, v in summary["mining"]["skipped"].items()})
            mlflow.log_metric("data/mining/mean_per_query", summary["mining"]["mean_per_query"])
        summary["dev_benchmark"] = str(dev) if dev else None
        summary["mlflow_run_id"] = mlflow.active_run().info.run_id
        for key in ("trainable_params", "total_params", "pairs", "seconds", "best_step"):
            mlflow.log_metric(f"summary/{key}", float(summary[key]))
        if summary.get("best_dev_mrr@10") is not None:
            mlflow.log_metric("summary/best_dev_mrr_at_10", summary["best_dev_mrr@10"])
        mlflow.log_artifacts(str(out / "adapter"), "adapter")
        mlflow.log_artifacts(str(out / "merged"), "merged_model")  # what the registry versions point at
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    metrics = {k: summary[k] for k in ("pairs", "trainable_params", "seconds", "best_step",
                                        "base_dev_mrr@10", "best_dev_mrr@10")}
    metrics["final_loss"] = summary["losses"][-1][1]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with open(out / "loss.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "loss"])
        writer.writerows(summary["losses"])
    with open(out / "dev.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "mrr@10"])
        writer.writerows(summary["dev"])
    return summary


def _selection_metric(params: Params, results: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The benchmark promotion decides on: the configured dev set, else the in-domain split."""
    bench = params.evaluate.promotion.benchmark
    if bench not in results:
        bench = "code-heldout"
    return bench, results[bench]


def run_promote(params: Params) -> dict[str, Any]:
    """Register the candidate; move `champion` only if it beats the current one.

    On an empty registry the un-tuned base model is registered first, as the champion
    to beat, so a fine-tune that makes things worse never ships.
    """
    from apex_models.evaluation.results import write_result
    from apex_models.models.base import resolve_base_model
    from apex_models.training.promotion import current_champion, decide, register_version

    lay, promo = layout(params), params.evaluate.promotion
    results = json.loads((lay.results / "embedder.json").read_text())["results"]
    train = json.loads((lay.embedder_model / "train_summary.json").read_text())
    bench, systems = _selection_metric(params, results)
    metric = f"{bench}/{promo.metric}".replace("@", "_at_")
    with stage_run("promote", params, ["evaluate"], data={"results/embedder": lay.results / "embedder.json"}) as mlflow:
        client = mlflow.MlflowClient()
        decisions = []
        if current_champion(client, promo.registered_model) is None:
            mlflow.log_artifacts(resolve_base_model(params.embedder.base), "base_model")
            base = register_version(client, promo.registered_model,
                                    f"{mlflow.get_artifact_uri()}/base_model", mlflow.active_run().info.run_id,
                                    metric, systems["base"][promo.metric], tags={"kind": "base"})
            decisions.append(decide(client, promo.registered_model, base, metric, promo.margin))
        run = client.get_run(train["mlflow_run_id"])
        candidate = register_version(client, promo.registered_model, f"{run.info.artifact_uri}/merged_model",
                                     run.info.run_id, metric, systems["tuned"][promo.metric],
                                     tags={"kind": "fine-tuned"})
        decisions.append(decide(client, promo.registered_model, candidate, metric, promo.margin))
        champion = current_champion(client, promo.registered_model)
        summary = {"decisions": [d.to_json() for d in decisions],
                   # A registry URI, not the artifact path: results files name no machine's folders.
                   "champion": {"version": str(champion.version), "run_id": champion.run_id,
                                "source": f"models:/{promo.registered_model}/{champion.version}",
                                "kind": champion.tags.get("kind"),
                                metric: float(champion.tags[metric])}}
        mlflow.log_dict(summary, "promotion.json")
        mlflow.set_tag("champion_version", str(champion.version))
    write_result(lay.results / "promotion-embedder.json", "embedder promotion", summary,
                 command="dvc repro promote", extra={"profile": params.profile})
    return summary
