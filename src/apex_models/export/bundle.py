"""Embedder export artifacts and bundle assembly, shared by the pipeline and the tests.

`export_embedder_artifacts` writes ONNX fp32 + int8 and tokenizer.json into a folder and
gates parity against torch: vectors that drift are never shipped (ParityError), because
stored memories would silently stop matching new queries. `assemble_bundle` lays the
artifacts out as a bundle with a model card and a checksummed manifest.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from apex_models.export.onnx import (export_embedder_onnx, export_head_onnx, optimize_bert_graph, quantize_int8,
                                     save_tokenizer_json)
from apex_models.export.parity import (ParityError, argmax_agreement, check_embedding_gate, check_floor,
                                       embedding_parity, probe_queries, probe_ranking_set, probe_texts,
                                       ranking_parity)
from apex_models.runtime.bundle import (SCHEMA_VERSION, EmbeddingSpec, Manifest, ModelSpec, load_bundle,
                                        parse_model_spec, write_manifest)

FP32, INT8, TOKENIZER, CARD, HF = "model.fp32.onnx", "model.int8.onnx", "tokenizer.json", "README.md", "hf"
DEFAULT_GATES = {"fp32_min_cosine": 0.9999, "int8_min_cosine": 0.98, "int8_mean_cosine": 0.99}
# Per task, the floors each precision must reach on the fixed probe set (parity.py says what
# each number is). Classifiers: the exported graph must pick the same class as torch.
HEAD_GATES: dict[str, dict[str, dict[str, float]]] = {
    "cross_encoder": {"fp32": {"spearman_min": 0.999, "top_k_order_agreement": 1.0},
                      "int8": {"spearman_mean": 0.98, "spearman_min": 0.9, "top_k_overlap": 0.9}},
    "sequence_classification": {"fp32": {"argmax_agreement": 1.0}, "int8": {"argmax_agreement": 0.99}},
    "token_classification": {"fp32": {"argmax_agreement": 1.0}, "int8": {"argmax_agreement": 0.99}},
}


def save_full_precision(model_dir: Path, out_dir: Path, pooling: str, normalize: bool, max_length: int) -> Path:
    """safetensors in Hugging Face layout plus sentence-transformers' module config.

    One folder that `AutoModel.from_pretrained` and `SentenceTransformer(...)` both load,
    computing the same vectors as the ONNX graph (same pooling, same normalisation).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Normalize, Pooling, Transformer

    transformer = Transformer(str(model_dir), max_seq_length=max_length)
    modules = [transformer, Pooling(transformer.get_word_embedding_dimension(), pooling_mode=pooling)]
    if normalize:
        modules.append(Normalize())
    SentenceTransformer(modules=modules, device="cpu").save(str(out_dir))
    if not (Path(out_dir) / "model.safetensors").is_file():
        raise RuntimeError(f"{out_dir}: sentence-transformers wrote no model.safetensors")
    return Path(out_dir)


def export_embedder_artifacts(model_dir: Path, out_dir: Path, base_model: str, *, pooling: str = "mean",
                              normalize: bool = True, query_max_length: int = 64, doc_max_length: int = 256,
                              opset: int = 17, per_channel: bool = True, reduce_range: bool = False,
                              gates: dict[str, float] | None = None, n_probe: int = 64) -> ModelSpec:
    """ONNX fp32 and int8 plus tokenizer.json in `out_dir`, parity measured and gated.

    The returned spec's paths are relative to `out_dir`; its `parity` holds the
    measurements. `parity.json` is written before the gates run, so a failed export
    still leaves the numbers that failed it.
    """
    from apex_models.models.embedder import TorchEncoder
    from apex_models.runtime.embedder import OnnxEmbedder

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    gates = {**DEFAULT_GATES, **(gates or {})}
    out_dir.mkdir(parents=True, exist_ok=True)
    export_embedder_onnx(model_dir, out_dir / FP32, pooling=pooling, normalize=normalize, opset=opset)
    quantize_int8(out_dir / FP32, out_dir / INT8, per_channel=per_channel, reduce_range=reduce_range)
    save_tokenizer_json(model_dir, out_dir / TOKENIZER, max_length=max(query_max_length, doc_max_length))
    save_full_precision(model_dir, out_dir / HF, pooling, normalize, doc_max_length)

    reference = TorchEncoder.from_base(str(model_dir), pooling=pooling, normalize=normalize,
                                       query_max_length=query_max_length, doc_max_length=doc_max_length)
    texts = probe_texts(n_probe)
    ref = reference.encode_documents(texts)
    spec = EmbeddingSpec(task="embedding", base_model=base_model, dimension=int(ref.shape[1]), pooling=pooling,
                     normalize=normalize, query_max_length=query_max_length, doc_max_length=doc_max_length,
                     tokenizer=TOKENIZER, onnx={"fp32": FP32, "int8": INT8}, default_precision="int8",
                     safetensors_dir=HF)
    parity: dict[str, Any] = {}
    for precision in ("fp32", "int8"):
        vectors = OnnxEmbedder(out_dir, spec, precision).encode_documents(texts)
        parity[precision] = embedding_parity(ref, np.asarray(vectors))
    parity["gates"] = gates
    (out_dir / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    check_embedding_gate("embedder fp32", parity["fp32"], min_cosine=gates["fp32_min_cosine"])
    check_embedding_gate("embedder int8", parity["int8"], min_cosine=gates["int8_min_cosine"],
                         mean_cosine=gates["int8_mean_cosine"])
    return spec.model_copy(update={"parity": parity,
                                   "default_reason": "int8 passed the parity gates; about 4x smaller and faster"})


def _torch_reference(model_dir: Path, task: str, max_length: int, n_probe: int) -> dict[str, Any]:
    """What torch computes on the probe set: per-query score lists, or logits per text/token."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    auto = AutoModelForTokenClassification if task == "token_classification" else AutoModelForSequenceClassification
    model = auto.from_pretrained(model_dir).eval()
    with torch.inference_mode():
        if task == "cross_encoder":
            queries, candidates = probe_ranking_set(n_probe)
            scores = []
            for q in queries:
                batch = tokenizer([q] * len(candidates), candidates, padding=True, truncation="longest_first",
                                  max_length=max_length, return_tensors="pt")
                scores.append(model(**batch).logits[:, 0].float().numpy())
            return {"queries": queries, "candidates": candidates, "scores": scores}
        # A sequence classifier reads queries: probe it with queries (see parity._QUERY_PROBES).
        texts = probe_queries(n_probe) if task == "sequence_classification" else probe_texts(n_probe)
        batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        logits = model(**batch).logits.float().numpy()
        if task == "token_classification":
            logits = logits[batch["attention_mask"].numpy().astype(bool)]
        return {"texts": texts, "logits": logits}


def _onnx_outputs(out_dir: Path, spec, precision: str, reference: dict[str, Any]):
    """The same probe computation through the runtime's own classes (what users will run)."""
    from apex_models.runtime.models import OnnxClassifier, OnnxRanker, OnnxTokenClassifier, pad_batch

    if spec.task == "cross_encoder":
        ranker = OnnxRanker(out_dir, spec, precision)
        return [ranker.score(q, reference["candidates"]) for q in reference["queries"]]
    if spec.task == "sequence_classification":
        clf = OnnxClassifier(out_dir, spec, precision)
        encodings = clf.tokenizer.encode_batch(reference["texts"])
        return np.concatenate([clf._run(pad_batch([e.ids], clf._pad)) for e in encodings])
    tagger = OnnxTokenClassifier(out_dir, spec, precision)
    encodings = tagger.tokenizer.encode_batch(reference["texts"])
    return np.concatenate([tagger._run(pad_batch([e.ids], tagger._pad))[0] for e in encodings])


def _head_parity(task: str, reference: dict[str, Any], outputs) -> dict[str, Any]:
    if task == "cross_encoder":
        return ranking_parity(reference["scores"], outputs)
    return argmax_agreement(reference["logits"], outputs)


def export_head_artifacts(model_dir: Path, out_dir: Path, task: str, fields: dict[str, Any], *,
                          opset: int = 17, per_channel: bool = True, reduce_range: bool = False,
                          gates: dict[str, dict[str, float]] | None = None, n_probe: int = 64,
                          optimize: bool = True) -> ModelSpec:
    """A fine-tuned classifier (ranker, intent, tagger) -> ONNX fp32 + int8, tokenizer.json
    and HF safetensors in `out_dir`, parity measured against torch and gated.

    `fields` are the task's own spec fields (max_length, labels, ...), plus base_model.
    With `optimize`, ONNX Runtime's transformer fusions are tried first and kept only if
    both precisions still pass the gates; otherwise the plain graphs ship (the spec's
    parity says which and why). A failed fp32 gate fails the export (the graph is wrong).
    A failed int8 gate drops the int8 file: the model ships in fp32 alone, and the spec's
    default_reason and parity["int8_dropped"] say why (dynamic quantisation can flip a
    trained classifier's close calls; that costs speed, not correctness). `parity.json`
    is written before a gate can raise.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification
    from transformers import AutoTokenizer

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    gates = gates or HEAD_GATES[task]
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "model.fp32.raw.onnx"
    export_head_onnx(model_dir, raw, task, opset=opset)
    save_tokenizer_json(model_dir, out_dir / TOKENIZER, max_length=fields["max_length"])
    auto = AutoModelForTokenClassification if task == "token_classification" else AutoModelForSequenceClassification
    auto.from_pretrained(model_dir).save_pretrained(out_dir / HF)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir / HF)
    spec = parse_model_spec({"task": task, **fields, "tokenizer": TOKENIZER,
                             "onnx": {"fp32": FP32, "int8": INT8}, "default_precision": "int8",
                             "safetensors_dir": HF})
    reference = _torch_reference(model_dir, task, fields["max_length"], n_probe)
    config = AutoConfig.from_pretrained(model_dir)
    attempts: list[tuple[str, Any]] = []
    if optimize:
        attempts.append(("ort_transformers_fusion", lambda: optimize_bert_graph(
            raw, out_dir / FP32, config.num_attention_heads, config.hidden_size)))
    attempts.append(("none", lambda: shutil.copy2(raw, out_dir / FP32)))
    parity: dict[str, Any] = {"gates": gates, "tried": {}}
    for name, make_fp32 in attempts:
        try:
            make_fp32()
            quantize_int8(out_dir / FP32, out_dir / INT8, per_channel=per_channel, reduce_range=reduce_range)
        except Exception as exc:  # noqa: BLE001 (an optimiser that cannot handle a graph is skipped, not fatal)
            if name == "none":
                raise
            parity["tried"][name] = {"passed": False, "failures": [f"{type(exc).__name__}: {exc}"[:500]]}
            continue
        result = {p: _head_parity(task, reference, _onnx_outputs(out_dir, spec, p, reference)) for p in ("fp32", "int8")}
        failures: dict[str, str] = {}
        for precision in ("fp32", "int8"):
            try:
                check_floor(f"{task} {precision} ({name})", result[precision], gates[precision])
            except ParityError as exc:
                failures[precision] = str(exc)
        parity["tried"][name] = {"passed": not failures, "failures": list(failures.values()),
                                 "failed_precisions": sorted(failures)}
        parity.update(result, graph_optimization=name)
        if not failures:
            break
    raw.unlink()
    last = parity["tried"][parity["graph_optimization"]]
    if "fp32" in last["failed_precisions"]:
        (out_dir / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
        raise ParityError("; ".join(last["failures"]))
    if "int8" in last["failed_precisions"]:
        (out_dir / INT8).unlink()
        parity["int8_dropped"] = last["failures"][0]
        (out_dir / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
        return spec.model_copy(update={
            "parity": parity, "onnx": {"fp32": FP32}, "default_precision": "fp32",
            "default_reason": f"int8 failed its parity gate and is not shipped ({last['failures'][0]})"})
    (out_dir / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    return spec.model_copy(update={"parity": parity,
                                   "default_reason": "int8 passed the parity gates; about 4x smaller and faster"})


def model_card(spec: EmbeddingSpec, profile: str, training: str = "", data: str = "", evaluation: str = "") -> str:
    """A model card: what it is, how it was made, how it scores, parity, intended use and limits."""
    rows = "\n".join(f"| {p} | {s['min']:.6f} | {s['mean']:.6f} | {s['n']} |"
                     for p, s in spec.parity.items() if p in ("fp32", "int8"))
    return f"""# apex-models embedder ({profile} profile)

A code-aware bi-encoder: developer queries and code to unit vectors of {spec.dimension}
dimensions ({spec.pooling} pooling and L2 normalisation inside the ONNX graph), compared
by inner product. Queries are truncated at {spec.query_max_length} tokens, documents at
{spec.doc_max_length}.

- **Base model**: `{spec.base_model}`
- **Default precision**: {spec.default_precision} ({spec.default_reason})
{training}
## Training data
{data or 'Not recorded for this bundle.'}

## Evaluation (held out; test figures are the report, dev was used for selection)
{evaluation or 'Not evaluated for this bundle.'}

## Parity with the torch model (fixed probe set)
| precision | min cosine | mean cosine | n |
|---|---|---|---|
{rows}

## Intended use and limitations
Retrieval of Python code, snippets and developer notes by natural-language query,
inside the apex memory runtimes. Trained on English text and Python code only; other
languages rely on the base model's general ability, unmeasured. Text unlike docstrings
or question titles (long prose, logs) is outside the training data.
"""


_TASK_WORDS = {
    "cross_encoder": "A cross-encoder ranker: a (query, candidate) pair read together -> one relevance score "
                     "(a logit; higher is more relevant). Used to re-rank a first stage's top-k.",
    "sequence_classification": "A text classifier: a developer query -> one label with a softmax confidence.",
    "token_classification": "A token tagger: text -> character spans of the labelled entity types.",
    "seq2seq_generation": ("A generator: a goal (and context) -> ordered steps, decoded greedily by an encoder "
                           "graph and a one-token decoder graph with a KV cache."),
}


def _first_stage_line(spec) -> str:
    scale = getattr(spec, "first_stage_scale", 0.0)
    if not scale:
        return ""
    return (f"\n- **Score**: {scale:g} x the embedder's cosine of (query, candidate) + this model's logit. It was "
            "trained as a correction to the first stage, so its logit alone is not a relevance score; "
            "`MemoryStore.search(rerank=True)` adds the cosine itself")


def _parity_rows(spec) -> str:
    rows = []
    for precision in ("fp32", "int8"):
        stats = spec.parity.get(precision)
        if stats:
            shown = ", ".join(f"{k} {v:.4f}" for k, v in stats.items()
                              if isinstance(v, float) and k != "max_abs_logit_diff")
            rows.append(f"| {precision} | {shown} | {stats.get('n')} |")
    return "\n".join(rows)


def head_model_card(name: str, spec, profile: str, *, training: str = "", data: str = "", evaluation: str = "",
                    intended_use: str = "", limitations: str = "") -> str:
    """A model card for a ranker, classifier or tagger: the same sections as the embedder's."""
    labels = f"\n- **Labels**: {', '.join(spec.labels)}" if hasattr(spec, "labels") else ""
    if spec.task == "seq2seq_generation":
        labels = f"\n- **Output**: at most {spec.max_new_tokens} new tokens, greedy"
    max_length = spec.max_source_length if spec.task == "seq2seq_generation" else spec.max_length
    window = (f" per window (a longer text is read in windows overlapping by {spec.stride} tokens; a token is "
              f"tagged at probability >= {spec.threshold})" if getattr(spec, "stride", None) is not None else "")
    fallback = (f"\n- **Fallback**: `{spec.fallback_label}` when the best confidence is below {spec.threshold:.3f}"
                if getattr(spec, "fallback_label", None) else "")
    return f"""# apex-models {name} ({profile} profile)

{_TASK_WORDS[spec.task]}

- **Base model**: `{spec.base_model}`
- **Input**: at most {max_length} tokens{window}{' for the pair (the longer side is truncated first)' if spec.task == 'cross_encoder' else ''}{labels}{fallback}{_first_stage_line(spec)}
- **Default precision**: {spec.default_precision} ({spec.default_reason})
- **Graph optimisation**: {spec.parity.get('graph_optimization', 'none')} (kept only when the parity gates held)
{training}
## Training data
{data or 'Not recorded for this bundle.'}

## Evaluation (held out)
{evaluation or 'Not evaluated for this bundle.'}

## Parity with the torch model (fixed probe set)
| precision | measures | n |
|---|---|---|
{_parity_rows(spec)}

## Intended use
{intended_use or 'Inside the apex memory runtimes.'}

## Limitations
{limitations or 'English developer text; other languages are unmeasured.'}
"""


@dataclass(frozen=True)
class BundleEntry:
    """One model for `assemble_bundle`: its export folder, its spec (paths relative to that
    folder), its model card and attribution notice. A bundle is a dict of these by name."""

    artifacts_dir: Path
    spec: Any  # one of the runtime's spec classes (EmbeddingSpec, CrossEncoderSpec, ...)
    card: str
    notice: str = ""


def _copy_model(entry: BundleEntry, sub: Path, prefix: str):
    """Copy one model's referenced files under `sub`; return its spec with bundle-relative paths."""
    spec = entry.spec
    sub.mkdir(parents=True)
    for rel in (spec.tokenizer, *(f for p in spec.onnx for f in spec.precision_files(p))):
        (sub / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(entry.artifacts_dir) / rel, sub / rel)
    if spec.safetensors_dir:
        shutil.copytree(Path(entry.artifacts_dir) / spec.safetensors_dir, sub / spec.safetensors_dir)
    (sub / CARD).write_text(entry.card, encoding="utf-8")
    if entry.notice:
        (sub / "NOTICE").write_text(entry.notice, encoding="utf-8")
    return spec.model_copy(update={**spec.moved_under(prefix), "card": f"{prefix}/{CARD}"})


def assemble_bundle(bundle_dir: Path, models: dict[str, BundleEntry], *, profile: str, bundle_version: str,
                    git_commit: str, data_hashes: dict[str, str] | None = None) -> Manifest:
    """Copy each model's artifacts into `bundle_dir/<name>/` and write one manifest for all.

    Built in a temporary sibling and renamed into place after `load_bundle` accepts it,
    so a crash never leaves a half bundle and a broken one is never published.
    """
    if not models:
        raise ValueError("a bundle needs at least one model")
    bundle_dir = Path(bundle_dir)
    tmp = bundle_dir.with_name(bundle_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    specs = {name: _copy_model(entry, tmp / name, name).model_dump() for name, entry in models.items()}
    manifest = write_manifest(tmp, {
        "schema_version": SCHEMA_VERSION, "bundle_version": bundle_version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit,
        "profile": profile, "data_hashes": data_hashes or {}, "models": specs,
    })
    load_bundle(tmp)
    shutil.rmtree(bundle_dir, ignore_errors=True)
    tmp.rename(bundle_dir)
    return manifest


def build_embedder_bundle(model_dir: Path, bundle_dir: Path, base_model: str, *, profile: str = "default",
                          bundle_version: str = "0.1.0", **export_options: Any) -> Manifest:
    """Export and bundle in one call (no training metrics): for tests and quick packaging."""
    from apex_models.tracking import git_commit

    artifacts = Path(bundle_dir).with_name(Path(bundle_dir).name + ".artifacts")
    spec = export_embedder_artifacts(model_dir, artifacts, base_model, **export_options)
    manifest = assemble_bundle(bundle_dir, {"embedder": BundleEntry(artifacts, spec, model_card(spec, profile))},
                               profile=profile, bundle_version=bundle_version, git_commit=git_commit())
    shutil.rmtree(artifacts, ignore_errors=True)
    return manifest
