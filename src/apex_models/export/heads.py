"""Export of the models beside the embedder (ranker, intent, planner, and any later classifier).

Each model listed in `export.heads` (name -> task) ships when its registry `champion`
exists, as named by `eval/results/promotion-<name>.json` (written by its evaluate stage).
What differs per model is small and lives in `HEADS`: the spec fields it needs (labels,
lengths, thresholds) and the held-out metric the accuracy gate compares int8 with fp32
on. Adding a model is one entry in conf/export (`heads`) and one `Head` here.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from apex_models.config import Params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Head:
    """How to export one named model: its spec fields and its held-out metric.

    `fields(params, champion_tags)` -> the spec's task fields (base_model, max_length,
    labels, ...); `heldout(params, runtime_model)` -> (metric name, value) or None when
    no held-out data is available (then only the parity gates decide).
    """

    fields: Callable[[Params, dict[str, str]], dict[str, Any]]
    heldout: Callable[[Params, Any], tuple[str, float] | None]
    card: Callable[[Params, Path], dict[str, str]]


def _ranker_fields(params: Params, tags: dict[str, str]) -> dict[str, Any]:
    return {"base_model": params.ranker.base, "max_length": params.ranker.max_length,
            "first_stage_scale": params.ranker.first_stage_scale}


def _ranker_heldout(params: Params, ranker) -> tuple[str, float] | None:
    """nDCG@10 of re-ranking BM25's top-20 on CoSQA dev (never the test split the ranker reports).

    A ranker trained as a correction to the embedder (`first_stage_scale`) is scored as it
    runs: its logit plus the scaled cosine of the first stage's vectors."""
    from apex_models.evaluation.rerank import first_stage_encoder, first_stage_scores, rerank_run
    from apex_models.evaluation.retrieval import BeirDataset, bm25_run, evaluate_run, load_beir
    from apex_models.layout import layout

    dev = layout(params).benchmark("cosqa-dev")
    if not (dev / "corpus.jsonl").is_file():
        return None
    ds = load_beir(dev)
    queries = dict(list(ds.queries.items())[:min(params.export.eval_dev_queries, 100)])
    ds = BeirDataset(ds.corpus, queries, {q: ds.qrels[q] for q in queries})
    first = bm25_run(ds, k=20)
    prior = None
    if params.ranker.first_stage_scale:
        # Only the documents some query will re-rank: their vectors, not the whole corpus's.
        head = BeirDataset({d: ds.corpus[d] for d in dict.fromkeys(d for r in first.values() for d in r[:20])},
                           ds.queries, ds.qrels)
        _, encoder = first_stage_encoder(params)
        prior = first_stage_scores(head, encoder.encode_queries(list(head.queries.values())),
                                   encoder.encode_documents(list(head.corpus.values())),
                                   params.ranker.first_stage_scale)
    run, _ = rerank_run(ds, first, ranker, 20, first_stage=prior)
    return "cosqa_dev_bm25top20_ndcg@10", evaluate_run(run, ds.qrels)["ndcg@10"]


def _ranker_card(params: Params, results: Path) -> dict[str, str]:
    from apex_models.evaluation.stages import markdown_table

    t = params.ranker.train
    path = results / "ranker.json"
    evaluation = json.loads(path.read_text())["results"] if path.is_file() else {}
    rows = {b: {"embedder": r["embedder"], "embedder+ranker": r["embedder+ranker"]} for b, r in evaluation.items()}
    return {
        "training": (f"- **Training**: LoRA r={params.ranker.lora.r}, {t.loss} loss over (query, positive, "
                     f"{t.negatives} mined negatives), {t.max_steps} steps of {t.batch_size} queries, lr {t.lr}"
                     + (f"; as a correction to the embedder: the loss is over {params.ranker.first_stage_scale:g} x "
                        "its cosine + this model's logit, and the scoring head started at zero"
                        if params.ranker.first_stage_scale else "") + ".\n"),
        "data": ("The embedder's (docstring summary -> function) and CoNaLa pairs (see the embedder's card for "
                 "licences and counts); negatives mined with BM25 (and the embedder when configured), "
                 "candidates whose query or code equals the positive's excluded as false negatives."),
        "evaluation": markdown_table(rows) if rows else "",
        "intended_use": "Re-ranking a first stage's top-k (search results, memories) for a developer query.",
        "limitations": ("Costs one encoder pass per (query, candidate) pair: keep k small on CPU. Trained on "
                        "Python code and English text only."),
    }


def _intent_fields(params: Params, tags: dict[str, str]) -> dict[str, Any]:
    cfg = params.intent
    return {"base_model": cfg.base, "max_length": cfg.max_length, "labels": cfg.label_names,
            "fallback_label": cfg.oos_label, "threshold": float(tags.get("threshold", 0.0))}


def _intent_heldout(params: Params, classifier) -> tuple[str, float] | None:
    """Macro-F1 on the gold intent set's dev split, with the shipped out_of_scope threshold."""
    from apex_models.evaluation.intent import classification_metrics, load_gold

    try:
        rows = load_gold(Path(params.paths.shared), "dev")
    except OSError:
        return None
    preds = [label for label, _ in classifier.classify([r["text"] for r in rows])]
    report = classification_metrics([r["label"] for r in rows], preds, params.intent.label_names,
                                    params.intent.oos_label)
    return "gold_dev_macro_f1", report["macro_f1"]


def _or_nan(x: float | None) -> float:
    return float("nan") if x is None else x


def _test_table(path: Path, columns: list[str], values: Callable[[dict], list[float]], caption: str) -> str:
    """A model card's evaluation table: one row per system of the results file's `test` split."""
    if not path.is_file():
        return ""
    test = json.loads(path.read_text())["results"]["test"]
    rows = [f"| {name} | " + " | ".join(f"{v:.4f}" for v in values(r)) + " |" for name, r in test.items()]
    header = ["| system | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    return "\n".join(header + rows) + f"\n\n{caption}"


def _intent_card(params: Params, results: Path) -> dict[str, str]:
    evaluation = _test_table(results / "intent.json", ["accuracy", "macro-F1", "out_of_scope recall"],
                             lambda r: [r["accuracy"], r["macro_f1"], _or_nan(r.get("oos_recall"))],
                             "Gold intent set, test split (dev tuned selection and threshold).")
    return {
        "training": (f"- **Training**: LoRA r={params.intent.lora.r}, label-smoothed cross-entropy, "
                     f"{params.intent.train.max_steps} steps at most, early stopping on gold dev macro-F1.\n"),
        "data": ("Weak labels from real text (Stack Exchange titles and tags, tldr pages, CoNaLa intents, "
                 "doc headings, error messages; CC BY-SA 4.0 / CC BY 4.0 / MIT as recorded in the dataset card "
                 "of `data/datasets/intent`), never the gold set."),
        "evaluation": evaluation,
        "intended_use": "Routing a developer query (search, debug, explain, plan, recall ...) in the runtimes.",
        "limitations": "English queries; weak labels are noisy, so rare intents have lower recall.",
    }


def _planner_fields(params: Params, tags: dict[str, str]) -> dict[str, Any]:
    cfg = params.planner
    return {"base_model": cfg.base, "max_source_length": cfg.max_source_length,
            "max_new_tokens": cfg.eval.max_new_tokens}


def _planner_heldout(params: Params, planner) -> tuple[str, float] | None:
    """ROUGE-L of the plans for (a seeded subset of) the planner dataset's dev split."""
    from apex_models.data.planner_dataset import load_planner_dataset
    from apex_models.evaluation.planner import score_plans
    from apex_models.training.planner import planner_paths

    try:
        dev = load_planner_dataset(planner_paths(params)["dataset"])["dev"]
    except FileNotFoundError:
        return None
    n = min(len(dev), params.planner.eval.test_plans or len(dev))
    rows = dev.shuffle(seed=params.seed).select(range(n)).to_list()
    plans = [planner.plan(r["input"]) for r in rows]
    return "dev_rouge_l", score_plans(plans, [r["steps"] for r in rows], params.planner.eval.step_match)["rouge_l"]


def _planner_card(params: Params, results: Path) -> dict[str, str]:
    cfg = params.planner
    evaluation = _test_table(results / "planner.json", ["ROUGE-L", "step recall", "step precision"],
                             lambda r: [r["rouge_l"], r["step_recall"], r["step_precision"]],
                             "Test split of the planner dataset (greedy decoding).")
    return {
        "training": (f"- **Training**: {cfg.arch} warm-started from {cfg.base} ({cfg.decoder_layers} decoder layers), "
                     f"{cfg.finetune} fine-tune, {cfg.train.max_steps} steps at most, early stopping on dev loss.\n"),
        "data": ("Real procedures: ordered lists in Stack Exchange answers (CC BY-SA 4.0) and tldr pages' "
                 "example descriptions in page order (CC BY 4.0), as recorded in the planner dataset."),
        "evaluation": evaluation,
        "intended_use": ("Drafting ordered steps for a developer goal, adapting the closest known procedure "
                         "(the runtime passes its closest `procedure` memory) with relevant memories as context."
                         if cfg.data.retrieve else
                         "Drafting ordered steps for a developer goal, with relevant memories as context."),
        "limitations": ("Greedy decoding of a small model: steps can repeat or stay generic, and with no similar "
                        "procedure to adapt it writes from the goal alone, which it does worse; it ships only "
                        "when it beats retrieving the nearest training plan on held-out goals."),
    }


HEADS: dict[str, Head] = {
    "ranker": Head(_ranker_fields, _ranker_heldout, _ranker_card),
    "intent": Head(_intent_fields, _intent_heldout, _intent_card),
    "planner": Head(_planner_fields, _planner_heldout, _planner_card),
}


def _champion(params: Params, name: str) -> dict[str, Any] | None:
    path = Path(params.paths.results) / f"promotion-{name}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())["results"].get("champion")


def accuracy_gate(name: str, metric: str | None, fp32: float | None, int8: float | None,
                  max_drop: float) -> tuple[str, str, float | None]:
    """(default precision, reason, relative drop): int8 ships if it keeps (1 - max_drop) of fp32."""
    if metric is None or fp32 is None or int8 is None:
        return "int8", "int8 passed parity; no held-out data to check its accuracy", None
    drop = (fp32 - int8) / max(abs(fp32), 1e-9)
    if drop > max_drop:
        return "fp32", (f"int8 {metric} {int8:.4f} is {drop:.2%} below fp32's {fp32:.4f} "
                        f"(allowed {max_drop:.0%})"), drop
    return "int8", f"int8 passed the parity gates and kept {1 - drop:.2%} of fp32's {metric}", drop


def rejected_candidate(params: Params, name: str) -> dict[str, Any] | None:
    """The registry version the model's last promotion decision evaluated and rejected, or None.

    The export job never ships it; `eval/export_candidates.py` exports it through the same
    gates so that a model without a champion still has measured parity, sizes and latency."""
    path = Path(params.paths.results) / f"promotion-{name}.json"
    if not path.is_file():
        return None
    decision = json.loads(path.read_text())["results"].get("decision") or {}
    if decision.get("promoted") or not decision.get("candidate_version"):
        return None
    version = str(decision["candidate_version"])
    return {"version": version, "source": f"models:/{decision['model']}/{version}", "kind": "rejected_candidate",
            "reason": decision.get("reason")}


def export_head(params: Params, name: str, task: str, out: Path, mlflow,
                model: dict[str, Any] | None = None) -> dict[str, Any]:
    """One model: champion -> artifacts + spec.json in `out`, or a report of why it is skipped.

    `model` names another registry version to export instead (`rejected_candidate`), for
    measurement only: the bundle stage ships champions alone."""
    from apex_models.export.bundle import export_head_artifacts
    from apex_models.export.planner import export_planner_artifacts
    from apex_models.export.planner_genai import export_causal_planner_artifacts
    from apex_models.runtime.models import GenaiPlanner, OnnxClassifier, OnnxPlanner, OnnxRanker

    if name not in HEADS:
        raise ValueError(f"export.heads names {name!r}, but apex_models.export.heads.HEADS has no entry for it "
                         f"(known: {sorted(HEADS)})")
    head, ex = HEADS[name], params.export
    champion = model or _champion(params, name)
    if champion is None:
        return {"exported": False, "reason": f"no champion for {name!r} (see eval/results/promotion-{name}.json)"}
    client = mlflow.MlflowClient()
    model_name, version = champion["source"].split("/")[1:3]
    registered = client.get_model_version(model_name, version)
    tags = dict(registered.tags)
    champion = {"run_id": registered.run_id, **champion}
    merged = Path(mlflow.artifacts.download_artifacts(champion["source"]))
    if task == "causal_generation":
        spec = export_causal_planner_artifacts(merged, out, params.planner, **head.fields(params, tags),
                                               gates=ex.head_gates[task], n_probe=ex.probe_texts)
    elif task == "seq2seq_generation":
        spec = export_planner_artifacts(merged, out, params.planner, **head.fields(params, tags), opset=ex.opset,
                                        per_channel=ex.int8.per_channel, reduce_range=ex.int8.reduce_range,
                                        gates=ex.head_gates[task], n_probe=ex.probe_texts)
    else:
        spec = export_head_artifacts(merged, out, task, head.fields(params, tags), opset=ex.opset,
                                     per_channel=ex.int8.per_channel, reduce_range=ex.int8.reduce_range,
                                     gates=ex.head_gates[task], n_probe=ex.probe_texts, optimize=ex.optimize_graph)
    runtime = {"cross_encoder": OnnxRanker, "seq2seq_generation": OnnxPlanner,
               "causal_generation": GenaiPlanner}.get(task, OnnxClassifier)
    heldout = {p: head.heldout(params, runtime(out, spec, p)) if p in spec.onnx else None for p in ("fp32", "int8")}
    metric = heldout["fp32"][0] if heldout["fp32"] else None
    values = {p: (v[1] if v else None) for p, v in heldout.items()}
    if "int8" in spec.onnx:
        default, reason, drop = accuracy_gate(name, metric, values["fp32"], values["int8"],
                                              ex.gates.int8_max_mrr_drop)
    else:  # int8 failed parity and was dropped: the spec already says so
        default, reason, drop = spec.default_precision, spec.default_reason, None
    spec = spec.model_copy(update={"default_precision": default, "default_reason": reason,
                                   "mlflow_run_id": champion["run_id"], "registry_version": version})
    (out / "spec.json").write_text(spec.model_dump_json(indent=2) + "\n")
    if values["fp32"] is not None:
        mlflow.log_metrics({f"{name}/heldout/{p}": v for p, v in values.items() if v is not None})
    return {"exported": True, "task": task, "champion": champion, "parity": spec.parity,
            "heldout": {"metric": metric, **values, "relative_drop": drop},
            "default_precision": default, "default_reason": reason,
            "sizes_bytes": {p: sum((out / f).stat().st_size for f in spec.precision_files(p)) for p in spec.onnx}}


def run_export_heads(params: Params, export_root: Path, mlflow) -> dict[str, Any]:
    """Every model of `export.heads`: exported under `export_root/<name>/` or skipped with a reason."""
    report = {}
    for name, task in params.export.heads.items():
        out = export_root / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        report[name] = export_head(params, name, task, out, mlflow)
        if not report[name]["exported"]:
            (out / "SKIPPED").write_text(report[name]["reason"] + "\n")
            log.warning("export: %s", report[name]["reason"])
    return report
