"""Embedder export artifacts and bundle assembly, shared by the pipeline and the tests.

`export_embedder_artifacts` writes ONNX fp32 + int8 and tokenizer.json into a folder and
gates parity against torch: vectors that drift are never shipped (ParityError), because
stored memories would silently stop matching new queries. `assemble_bundle` lays the
artifacts out as a bundle with a model card and a checksummed manifest.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from apex_models.export.onnx import export_embedder_onnx, quantize_int8, save_tokenizer_json
from apex_models.export.parity import check_embedding_gate, embedding_parity, probe_texts
from apex_models.runtime.bundle import SCHEMA_VERSION, Manifest, ModelSpec, load_bundle, write_manifest

FP32, INT8, TOKENIZER, CARD, HF = "model.fp32.onnx", "model.int8.onnx", "tokenizer.json", "README.md", "hf"
DEFAULT_GATES = {"fp32_min_cosine": 0.9999, "int8_min_cosine": 0.98, "int8_mean_cosine": 0.99}


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
    spec = ModelSpec(task="embedding", base_model=base_model, dimension=int(ref.shape[1]), pooling=pooling,
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


def model_card(spec: ModelSpec, profile: str, training: str = "", data: str = "", evaluation: str = "") -> str:
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


def assemble_bundle(bundle_dir: Path, artifacts_dir: Path, spec: ModelSpec, *, profile: str,
                    bundle_version: str, git_commit: str, card: str, notice: str = "",
                    data_hashes: dict[str, str] | None = None) -> Manifest:
    """Copy the embedder's artifacts into `bundle_dir/embedder/` and write the manifest.

    Built in a temporary sibling and renamed into place after `load_bundle` accepts it,
    so a crash never leaves a half bundle and a broken one is never published.
    """
    bundle_dir = Path(bundle_dir)
    tmp = bundle_dir.with_name(bundle_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    sub = tmp / "embedder"
    sub.mkdir(parents=True)
    for name in (FP32, INT8, TOKENIZER):
        shutil.copy2(Path(artifacts_dir) / name, sub / name)
    if spec.safetensors_dir:
        shutil.copytree(Path(artifacts_dir) / spec.safetensors_dir, sub / spec.safetensors_dir)
    (sub / CARD).write_text(card, encoding="utf-8")
    if notice:
        (sub / "NOTICE").write_text(notice, encoding="utf-8")
    prefixed = spec.model_copy(update={"tokenizer": f"embedder/{TOKENIZER}", "card": f"embedder/{CARD}",
                                       "onnx": {p: f"embedder/{f}" for p, f in spec.onnx.items()},
                                       "safetensors_dir": f"embedder/{spec.safetensors_dir}"
                                       if spec.safetensors_dir else None})
    manifest = write_manifest(tmp, {
        "schema_version": SCHEMA_VERSION, "bundle_version": bundle_version,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_commit": git_commit,
        "profile": profile, "data_hashes": data_hashes or {}, "models": {"embedder": prefixed.model_dump()},
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
    manifest = assemble_bundle(bundle_dir, artifacts, spec, profile=profile, bundle_version=bundle_version,
                               git_commit=git_commit(), card=model_card(spec, profile))
    shutil.rmtree(artifacts, ignore_errors=True)
    return manifest
