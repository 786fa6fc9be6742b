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
                   data={"datasets/embedder": lay.embedder_data}) as mlflow:
        summary = train_embedder(params, lay.embedder_data / "train.jsonl", dev, out, mlflow=mlflow)
        summary["dev_benchmark"] = str(dev) if dev else None
        summary["mlflow_run_id"] = mlflow.active_run().info.run_id
        for key in ("trainable_params", "total_params", "pairs", "seconds", "best_step"):
            mlflow.log_metric(f"summary/{key}", float(summary[key]))
        if summary.get("best_dev_mrr@10") is not None:
            mlflow.log_metric("summary/best_dev_mrr_at_10", summary["best_dev_mrr@10"])
        mlflow.log_artifacts(str(out / "adapter"), "adapter")
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
