"""Planner evaluation: ROUGE-L and step recall on held-out plans, against a retrieval baseline.

- **ROUGE-L** (F1 of the longest common subsequence of lower-cased words) between the
  generated plan and the reference plan, each as its steps joined in order, so a plan
  with the right steps in the wrong order scores lower.
- **Step recall**: the share of reference steps matched by some generated step with a
  ROUGE-L F1 of at least `step_match`; **step precision** the other way round.
- **Retrieval baseline**: the plan of the training goal nearest to the test goal by
  BM25 (what a lookup in the training data already gives); the model must beat it. With
  `planner.data.retrieve` the model reads that same plan beside the goal, so it must do
  better than copying what it was shown.

The LCS is computed here (a few lines) because the `rouge_score` package is not part of
the environment and `evaluate`'s rouge metric is a hub script (fails offline); the tests
pin it to golden values.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from apex_models.config import Params

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, O(len(a)*len(b)))."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 (beta 1) over lower-cased words; 0 when either side is empty."""
    p, r = words(prediction), words(reference)
    lcs = lcs_length(p, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(p), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def step_match(generated: list[str], reference: list[str], threshold: float) -> tuple[float, float]:
    """(step recall, step precision): reference steps matched by some generated step at
    ROUGE-L >= threshold, and generated steps that match some reference step."""
    if not reference or not generated:
        return 0.0, 0.0
    scores = np.array([[rouge_l(g, r) for r in reference] for g in generated])
    hit = scores >= threshold
    return float(hit.any(axis=0).mean()), float(hit.any(axis=1).mean())


def score_plans(generated: list[list[str]], references: list[list[str]], threshold: float) -> dict[str, float]:
    """Mean plan-level ROUGE-L, step recall and precision, and mean step counts."""
    if len(generated) != len(references) or not references:
        raise ValueError(f"{len(generated)} generated plans for {len(references)} references")
    rl, rec, prec = [], [], []
    for g, r in zip(generated, references):
        rl.append(rouge_l(" ".join(g), " ".join(r)))
        a, b = step_match(g, r, threshold)
        rec.append(a)
        prec.append(b)
    return {"rouge_l": round(float(np.mean(rl)), 4), "step_recall": round(float(np.mean(rec)), 4),
            "step_precision": round(float(np.mean(prec)), 4),
            "mean_steps": round(float(np.mean([len(g) for g in generated])), 2),
            "reference_mean_steps": round(float(np.mean([len(r) for r in references])), 2),
            "plans": len(references)}


def retrieval_baseline(train: list[dict], test: list[dict]) -> list[list[str]]:
    """Per test row, the steps of the BM25-nearest training plan (empty when nothing matches):
    the same lookup that puts a similar plan into the planner's input (data/planner_dataset.py)."""
    from apex_models.data.planner_dataset import nearest_plans

    found = nearest_plans([r["query"] for r in train], [r["unit"] for r in train],
                          [r["query"] for r in test], [r["unit"] for r in test])
    return [train[i]["steps"] if i is not None else [] for i in found]


def evaluate_planner(params: Params, dataset_dir: Path, model_dir: Path, progress: bool = True,
                     device: str = "cpu") -> dict[str, Any]:
    """Generate plans for the (seeded subset of the) test split; score model and baseline,
    overall and per source; keep a few examples for the reader. `device` is where greedy
    decoding runs (eval/gpu_planner_real.py decodes on the GPU it trained on)."""
    from apex_models.data.planner_dataset import load_planner_dataset
    from apex_models.training.planner import generate_plans, load_planner

    cfg = params.planner
    ds = load_planner_dataset(dataset_dir)
    test = ds["test"]
    if cfg.eval.test_plans and cfg.eval.test_plans < len(test):
        test = test.shuffle(seed=params.seed).select(range(cfg.eval.test_plans))
    test = test.to_list()
    baseline = retrieval_baseline(ds["train"].to_list(), test)
    model, tokenizer = load_planner(model_dir, cfg)
    model.to(device)
    generated = generate_plans(model, tokenizer, cfg, [r["input"] for r in test], cfg.eval.max_new_tokens,
                               cfg.eval.batch_size, progress=progress)
    refs = [r["steps"] for r in test]
    out: dict[str, Any] = {"test": {"model": score_plans(generated, refs, cfg.eval.step_match),
                                    "retrieval_bm25": score_plans(baseline, refs, cfg.eval.step_match)}}
    for source in sorted({r["source"] for r in test}):
        keep = [i for i, r in enumerate(test) if r["source"] == source]
        out[f"test/{source}"] = {
            "model": score_plans([generated[i] for i in keep], [refs[i] for i in keep], cfg.eval.step_match),
            "retrieval_bm25": score_plans([baseline[i] for i in keep], [refs[i] for i in keep], cfg.eval.step_match)}
    out["examples"] = [{"goal": test[i]["input"], "reference": refs[i], "model": generated[i],
                        "retrieval_bm25": baseline[i]} for i in range(min(5, len(test)))]
    return out


def run_evaluate_planner(params: Params) -> dict[str, Any]:
    """The evaluate_planner stage: eval/results/planner.json, then registry candidate and promotion
    (the candidate must beat the retrieval baseline and the current champion)."""
    from apex_models.evaluation.results import write_result
    from apex_models.tracking import stage_run
    from apex_models.training.planner import planner_paths
    from apex_models.training.promotion import current_champion, decide, register_version

    if params.planner is None:
        raise ValueError("params has no `planner` section: re-run pipelines/compose.py")
    paths, promo = planner_paths(params), params.planner.promotion
    train_summary = json.loads((paths["model"] / "train_summary.json").read_text())
    with stage_run("evaluate_planner", params, ["planner"],
                   data={"dataset": paths["dataset"], "model": paths["model"] / "model"}) as mlflow:
        results = evaluate_planner(params, paths["dataset"], paths["model"] / "model")
        for system in ("model", "retrieval_bm25"):
            for key, value in results["test"][system].items():
                mlflow.log_metric(f"test/{system}/{key}", float(value))
        metric = f"test/{promo.metric}"
        value, base = results["test"]["model"][promo.metric], results["test"]["retrieval_bm25"][promo.metric]
        client = mlflow.MlflowClient()
        run = client.get_run(train_summary["mlflow_run_id"])
        candidate = register_version(client, promo.registered_model, f"{run.info.artifact_uri}/model",
                                     run.info.run_id, metric, value, tags={"kind": "fine-tuned"})
        if value > base + promo.margin:
            decision = decide(client, promo.registered_model, candidate, metric, promo.margin).to_json()
        else:
            reason = (f"{metric} {value:.4f} does not beat the retrieval baseline's {base:.4f} "
                      f"by the margin {promo.margin}")
            client.set_model_version_tag(promo.registered_model, candidate.version, "decision", "rejected")
            client.set_model_version_tag(promo.registered_model, candidate.version, "decision_reason", reason)
            client.set_tag(run.info.run_id, "promotion", "rejected")
            client.set_tag(run.info.run_id, "promotion_reason", reason)
            decision = {"model": promo.registered_model, "metric": metric, "candidate_version": str(candidate.version),
                        "candidate_value": value, "baseline_value": base, "promoted": False, "reason": reason}
        champion = current_champion(client, promo.registered_model)
        results["promotion"] = {"decision": decision,
                                "champion": None if champion is None else
                                f"models:/{promo.registered_model}/{champion.version}"}
        # The export stage reads promotion-<name>.json for every head (export/heads.py).
        promotion = {"decision": decision, "baseline": {"name": "retrieval_bm25", metric: base},
                     "champion": None if champion is None else {
                         "version": str(champion.version), "run_id": champion.run_id,
                         "source": f"models:/{promo.registered_model}/{champion.version}"}}
        mlflow.log_dict(results, "planner.json")
    results["training"] = {k: train_summary[k] for k in ("seconds", "steps", "best_step", "trainable_params",
                                                         "total_params", "train_plans", "early_stopped")}
    write_result(paths["results"] / "planner.json", "planner", results, command="dvc repro evaluate_planner",
                 extra={"profile": params.profile})
    write_result(paths["results"] / "promotion-planner.json", "planner promotion", promotion,
                 command="dvc repro evaluate_planner", extra={"profile": params.profile})
    return {"rouge_l": value, "baseline_rouge_l": base, "promoted": results["promotion"]["decision"]["promoted"]}
