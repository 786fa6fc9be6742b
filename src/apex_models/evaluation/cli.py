"""`apex eval ...`: score any bundle on any BEIR folder, beside BM25 and the base model.

Progress goes to stderr and exactly one JSON object to stdout, so the output pipes
straight into `jq` or a results file. torch is only needed for `--baselines`' base model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from apex_models.cli_support import print_json, user_errors

eval_app = typer.Typer(help="Evaluate a bundle's models on held-out benchmarks.", no_args_is_help=True)
_err = Console(stderr=True)


def evaluate_bundle_retrieval(bundle_dir: Path, dataset_dir: Path, baselines: bool,
                              split: str | None = None, precision: str | None = None,
                              batch_size: int = 64) -> dict[str, dict[str, float]]:
    """The JSON that `apex eval retrieval` prints: {"bundle": {...}, "bm25": {...}, "base": {...}}."""
    from apex_models.evaluation.retrieval import bm25_run, dense_run, evaluate_run, load_beir
    from apex_models.runtime import load_bundle

    bundle = load_bundle(bundle_dir)
    ds = load_beir(dataset_dir, split=split)
    _err.print(f"[eval] {len(ds.queries)} queries, {len(ds.corpus)} documents from {dataset_dir}")
    embedder = bundle.embedder(precision=precision)
    results: dict[str, dict[str, float]] = {}
    _err.print(f"[eval] bundle embedder ({embedder.precision})")
    results["bundle"] = evaluate_run(
        dense_run(ds, embedder.encode_queries, lambda t: embedder.encode_documents(t, batch_size=batch_size,
                                                                                      progress=True)),
        ds.qrels)
    if baselines:
        _err.print("[eval] BM25")
        results["bm25"] = evaluate_run(bm25_run(ds), ds.qrels)
        spec = bundle.manifest.models["embedder"]
        try:
            from apex_models.models.embedder import TorchEncoder
        except ImportError as exc:  # the runtime-only install has no torch
            raise typer.BadParameter(
                f"the base-model baseline needs the `train` extra (torch, transformers): {exc}") from exc
        _err.print(f"[eval] base model {spec.base_model} (torch)")
        base = TorchEncoder.from_base(spec.base_model, pooling=spec.pooling,
                                      query_max_length=spec.query_max_length,
                                      doc_max_length=spec.doc_max_length)
        results["base"] = evaluate_run(
            dense_run(ds, base.encode_queries, lambda t: base.encode_documents(t, batch_size=batch_size,
                                                                                progress=True)),
            ds.qrels)
    return results


@eval_app.command("retrieval")
def retrieval(
    bundle: Annotated[Path, typer.Option(help="Bundle folder (has manifest.json).", exists=True, file_okay=False)],
    dataset: Annotated[Path, typer.Option(help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.",
                                          exists=True, file_okay=False)],
    baselines: Annotated[bool, typer.Option("--baselines", help="Also score BM25 and the un-tuned base model.")] = False,
    split: Annotated[str | None, typer.Option(help="Which qrels file to score (default: test, or the only one).")] = None,
    precision: Annotated[str | None, typer.Option(help="fp32 or int8; default: the manifest's choice.")] = None,
) -> None:
    """Print nDCG@10, MRR@10 and Recall@1/10/100 as one JSON object on stdout."""
    with user_errors():
        results = evaluate_bundle_retrieval(bundle, dataset, baselines, split=split, precision=precision)
    print_json(results)
