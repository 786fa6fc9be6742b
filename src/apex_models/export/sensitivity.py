"""Export the sensitivity token classifier to ONNX fp32 and int8, gated on argmax agreement.

The embedder's exporter is reused piece by piece: the zero-token-types wrapper (so the
graph takes only input_ids and attention_mask, like the runtime feeds it), the int8
quantiser and the tokenizer writer. The gate differs: what the runtime uses is each
token's argmax label, so the gate counts how often ONNX and torch agree on it over a
fixed probe set (fp32 must agree everywhere, int8 on at least the configured share).

The output folder is self-contained and read by
:class:`apex_models.sensitivity.classifier.SensitivityClassifier`: ``sensitivity.json``
(files with sha256, labels, window, threshold, gate results) beside the ONNX files,
``tokenizer.json`` and ``hf/`` (safetensors). Once the model is promoted, the bundle
stage ships the folder as the bundle's ``sensitivity`` model (`bundle_spec`), and
``SensitivityClassifier.from_bundle`` reads it from there.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from apex_models.export.onnx import _ZeroTokenTypes, quantize_int8, save_tokenizer_json
from apex_models.export.parity import ParityError
from apex_models.hashing import sha256_file
from apex_models.sensitivity.classifier import FORMAT_VERSION, MANIFEST
from apex_models.sensitivity.synth import TOKEN_LABELS, lookalike_line, pii_line, secret_line

HF = "hf"   # full precision in Hugging Face layout, as for every model of the bundle
_PROBE_CODE = ("def connect(cfg):", "    return psycopg.connect(**cfg)", "import os", "",
               "# settings for the worker", "retries: 3", "timeout = 30", "    logger.info('ready')")


def probe_texts(n: int, seed: int = 20241125) -> list[str]:
    """`n` fixed probe texts: code lines around generated secrets, personal data and look-alikes.

    Generated from a fixed seed, never from a benchmark; the same `n` gives the same texts.
    """
    rng = random.Random(seed)
    makers = (secret_line, pii_line, lookalike_line)
    out = []
    for i in range(n):
        line, _ = makers[i % 3](rng)
        out.append("\n".join([rng.choice(_PROBE_CODE), line, rng.choice(_PROBE_CODE)]))
    return out


class TokenLogits(torch.nn.Module):
    """forward(input_ids, attention_mask) -> [batch, sequence, labels] logits."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = _ZeroTokenTypes(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids, attention_mask).logits


def export_token_classifier_onnx(model_dir: Path, out_path: Path, opset: int = 17) -> Path:
    """One self-contained ONNX file (TorchScript exporter), batch and sequence dynamic."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    module = TokenLogits(model).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sample = tokenizer(["password = 'x'", "a second, somewhat longer example text"], padding=True,
                       return_tensors="pt")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(module, (sample["input_ids"].to(torch.int64), sample["attention_mask"].to(torch.int64)),
                          str(out_path), dynamo=False, input_names=["input_ids", "attention_mask"],
                          output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                        "attention_mask": {0: "batch", 1: "sequence"},
                                        "logits": {0: "batch", 1: "sequence"}},
                          opset_version=opset, do_constant_folding=True)
    onnx.checker.check_model(str(out_path))
    return out_path


def argmax_agreement(model_dir: Path, onnx_path: Path, texts: list[str], max_length: int) -> dict[str, Any]:
    """Share of real tokens whose argmax label is the same under torch and ONNX."""
    import onnxruntime as ort
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForTokenClassification.from_pretrained(model_dir).eval()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    agree = total = 0
    worst, worst_rate = -1, 1.1
    for i, text in enumerate(texts):
        enc = tokenizer([text], truncation=True, max_length=max_length, return_tensors="pt")
        with torch.inference_mode():
            ref = model(**enc).logits[0].numpy().argmax(-1)
        got = session.run(None, {"input_ids": enc["input_ids"].numpy().astype(np.int64),
                                 "attention_mask": enc["attention_mask"].numpy().astype(np.int64)})[0][0].argmax(-1)
        same = int((ref == got).sum())
        agree += same
        total += len(ref)
        if same / len(ref) < worst_rate:
            worst, worst_rate = i, same / len(ref)
    return {"agreement": agree / max(total, 1), "tokens": total, "texts": len(texts), "worst_index": worst}


def check_agreement_gate(name: str, stats: dict[str, Any], minimum: float) -> None:
    """Raise ParityError when the argmax agreement falls below `minimum`."""
    if not stats["agreement"] >= minimum:
        raise ParityError(f"argmax gate failed for {name}: agreement {stats['agreement']:.4f} < {minimum} over "
                          f"{stats['tokens']} tokens (worst probe text index {stats['worst_index']})")


def export_sensitivity(model_dir: Path, out_dir: Path, cfg, threshold: float, int8_cfg, opset: int = 17
                       ) -> dict[str, Any]:
    """Write fp32 + int8 ONNX, tokenizer.json and sensitivity.json into `out_dir`; gates raise."""
    from transformers import AutoTokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    fp32 = export_token_classifier_onnx(model_dir, out_dir / "sensitivity-fp32.onnx", opset)
    int8 = quantize_int8(fp32, out_dir / "sensitivity-int8.onnx", per_channel=int8_cfg.per_channel,
                         reduce_range=int8_cfg.reduce_range)
    tok = save_tokenizer_json(model_dir, out_dir / "tokenizer.json", cfg.max_length)
    save_full_precision_tagger(model_dir, out_dir / HF)
    probes = probe_texts(cfg.export.probe_texts)
    gates = {"fp32": argmax_agreement(model_dir, fp32, probes, cfg.max_length),
             "int8": argmax_agreement(model_dir, int8, probes, cfg.max_length)}
    check_agreement_gate("sensitivity fp32", gates["fp32"], cfg.export.fp32_min_agreement)
    default, reason = "int8", "int8 passed its gate"
    try:
        check_agreement_gate("sensitivity int8", gates["int8"], cfg.export.int8_min_agreement)
    except ParityError as err:  # like the embedder: a degraded int8 does not ship as the default
        default, reason = "fp32", str(err)
    hf_tok = AutoTokenizer.from_pretrained(model_dir)
    manifest = {
        "format": FORMAT_VERSION, "task": "token-classification", "labels": list(TOKEN_LABELS),
        "doc_labels": dict(cfg.doc_labels), "max_length": cfg.max_length, "stride": cfg.stride,
        "threshold": threshold, "default_precision": default, "default_precision_reason": reason,
        "special": {"cls": hf_tok.cls_token_id, "sep": hf_tok.sep_token_id, "pad": hf_tok.pad_token_id},
        "files": {name: {"path": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size}
                  for name, p in (("fp32", fp32), ("int8", int8), ("tokenizer", tok))},
        "gates": {k: {**v, "minimum": getattr(cfg.export, f"{k}_min_agreement"),
                      "passed": v["agreement"] >= getattr(cfg.export, f"{k}_min_agreement")}
                  for k, v in gates.items()},
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def save_full_precision_tagger(model_dir: Path, out_dir: Path) -> Path:
    """The merged model as safetensors in Hugging Face layout (AutoModelForTokenClassification loads it)."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    AutoModelForTokenClassification.from_pretrained(model_dir).save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out_dir)
    return out_dir


def bundle_spec(folder: Path, base_model: str, champion: dict[str, Any] | None = None):
    """The export folder's own manifest as a bundle spec (task token_classification, windowed),
    so the bundle stage can ship the sensitivity model beside the others."""
    from apex_models.runtime.bundle import TokenClassifierSpec

    m = json.loads((Path(folder) / MANIFEST).read_text())
    onnx_files = {p: m["files"][p]["path"] for p in ("fp32", "int8") if p in m["files"]}
    kinds = list(dict.fromkeys(tag[2:] for tag in m["labels"] if tag != "O"))   # SECRET, PII
    return TokenClassifierSpec(
        base_model=base_model, tokenizer=m["files"]["tokenizer"]["path"], onnx=onnx_files,
        default_precision=m["default_precision"], default_reason=m["default_precision_reason"],
        parity={k: v for k, v in m["gates"].items()}, safetensors_dir=HF if (Path(folder) / HF).is_dir() else None,
        max_length=m["max_length"], labels=m["labels"], scheme="BIO", span_labels=kinds,
        document_labels=list(m["doc_labels"]), stride=m["stride"], threshold=m["threshold"],
        mlflow_run_id=(champion or {}).get("run_id"), registry_version=(champion or {}).get("version"))


def heldout_gate(out_dir: Path, rows: list[dict], max_drop: float) -> dict[str, Any]:
    """The accuracy gate every exported model passes: int8's held-out metric (secret span F1
    of the model's own spans on `rows`, dev documents) must keep 1 - `max_drop` of fp32's,
    else the manifest makes fp32 the default and says why. Updates sensitivity.json."""
    from apex_models.export.heads import accuracy_gate
    from apex_models.sensitivity.classifier import SensitivityClassifier
    from apex_models.sensitivity.spans import span_scores

    manifest = json.loads((out_dir / MANIFEST).read_text())
    values = {}
    for precision in ("fp32", "int8"):
        clf = SensitivityClassifier.load(out_dir, precision=precision)
        values[precision] = span_scores(rows, [clf.model_spans(r["text"]) for r in rows])["secret"]["f1"]
    metric = "dev_model_secret_span_f1"
    default, reason, drop = accuracy_gate("sensitivity", metric, values["fp32"], values["int8"], max_drop)
    heldout = {"metric": metric, "documents": len(rows), **values, "relative_drop": drop}
    if manifest["default_precision"] == "int8":  # a failed parity gate already made fp32 the default
        manifest.update(default_precision=default, default_precision_reason=reason)
    manifest["heldout"] = heldout
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def run_export_sensitivity(params) -> dict[str, Any]:
    """The export_sensitivity stage: ONNX files and their gates in one MLflow run."""
    from apex_models.evaluation.results import write_result
    from apex_models.tracking import stage_run
    from apex_models.training.sensitivity import require_config, sensitivity_paths

    cfg = require_config(params)
    paths = sensitivity_paths(params)
    threshold = json.loads((paths.model / "threshold.json").read_text())["threshold"]
    with stage_run("export_sensitivity", params, ["sensitivity", "export"],
                   data={"models/sensitivity": paths.model / "merged"}) as mlflow:
        manifest = export_sensitivity(paths.model / "merged", paths.export, cfg, threshold, params.export.int8,
                                      params.export.opset)
        if cfg.export.heldout_docs:
            from apex_models.data.sensitivity_dataset import read_examples

            rows = read_examples(paths.data / "dev")[:cfg.export.heldout_docs]
            manifest = heldout_gate(paths.export, rows, params.export.gates.int8_max_mrr_drop)
            mlflow.log_metrics({f"heldout/{p}/secret_f1": manifest["heldout"][p] for p in ("fp32", "int8")})
        for k, v in manifest["gates"].items():
            mlflow.log_metric(f"gate/{k}_argmax_agreement", v["agreement"])
        mlflow.log_artifacts(str(paths.export), "sensitivity_onnx")
    summary = {"gates": manifest["gates"], "threshold": threshold,
               "default_precision": manifest["default_precision"],
               "default_precision_reason": manifest["default_precision_reason"],
               "heldout": manifest.get("heldout"),
               "files": {k: {"bytes": v["bytes"], "sha256": v["sha256"]} for k, v in manifest["files"].items()}}
    write_result(paths.results / "export-sensitivity.json", "sensitivity ONNX export", summary,
                 command="dvc repro export_sensitivity", extra={"profile": params.profile})
    return summary
