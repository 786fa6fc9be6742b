"""Interoperability check with optimum's ORTModel classes, run in a SEPARATE environment.

optimum-onnx 0.1.0 needs transformers < 4.58 and cannot share the project's environment
(transformers 5), so this script imports nothing from apex_models: only numpy,
tokenizers, onnxruntime, transformers and optimum. For a bundle's sequence classifiers
and ranker it checks that

1. `ORTModelForSequenceClassification.from_pretrained(<model>/hf, export=True)` (optimum's
   own exporter on our safetensors) gives the same logits as our ONNX fp32 graph;
2. our ONNX fp32 file, copied beside the hf/ config as model.onnx, loads and runs as an
   ORTModel and gives our runtime's numbers (or the error optimum raises).

    python3.11 -m venv .cache/optimum-env && .cache/optimum-env/bin/pip install torch==2.13.0 \\
        "optimum[onnxruntime]" "transformers<4.58"
    .cache/optimum-env/bin/python export/check_optimum.py export/bundles/default

Prints one JSON object; exit code 1 when an exported model's logits differ by more than 1e-3.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

TEXTS = ["read a json file into a dict", "TypeError: 'NoneType' object is not subscriptable",
         "how do I configure the logging level", "plan the migration to postgres 16"]
CANDIDATES = ["import json\nwith open(p) as f:\n    data = json.load(f)", "logging.basicConfig(level=logging.INFO)"]


def _ours(folder: Path, onnx_name: str, pairs: bool) -> np.ndarray:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    session = ort.InferenceSession(str(folder / onnx_name), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    rows = []
    items = [(q, c) for q in TEXTS for c in CANDIDATES] if pairs else TEXTS
    for item in items:
        enc = tok.encode(*item) if pairs else tok.encode(item)
        feeds = {"input_ids": np.array([enc.ids]), "attention_mask": np.array([enc.attention_mask]),
                 "token_type_ids": np.array([enc.type_ids])}
        rows.append(session.run(None, {k: v for k, v in feeds.items() if k in names})[0].reshape(-1))
    return np.stack(rows)


def _optimum_export(hf: Path, pairs: bool) -> np.ndarray:
    import torch
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    model = ORTModelForSequenceClassification.from_pretrained(str(hf), export=True)
    tok = AutoTokenizer.from_pretrained(str(hf))
    if pairs:
        qs = [q for q in TEXTS for _ in CANDIDATES]
        cs = [c for _ in TEXTS for c in CANDIDATES]
        batch = tok(qs, cs, padding=True, return_tensors="pt")
    else:
        batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits.numpy()


def _load_ours_as_ortmodel(folder: Path, ours: np.ndarray, pairs: bool) -> str:
    """Our fp32 graph as an ORTModel: does it load, run, and give our numbers?"""
    import torch
    from optimum.onnxruntime import ORTModelForSequenceClassification
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        for f in (folder / "hf").iterdir():
            shutil.copy2(f, Path(tmp) / f.name)
        shutil.copy2(folder / "model.fp32.onnx", Path(tmp) / "model.onnx")
        try:
            model = ORTModelForSequenceClassification.from_pretrained(tmp, file_name="model.onnx")
            tok = AutoTokenizer.from_pretrained(tmp)
            rows = []
            items = [(q, c) for q in TEXTS for c in CANDIDATES] if pairs else [(t,) for t in TEXTS]
            for item in items:
                with torch.inference_mode():
                    out = model(**tok(*item, return_tensors="pt"))
                rows.append(np.asarray(out.logits).reshape(-1))
            diff = float(np.max(np.abs(np.stack(rows).reshape(ours.shape) - ours)))
            return f"loads and runs; max abs diff to our runtime {diff:.2e}"
        except Exception as exc:  # noqa: BLE001 (report whatever optimum says)
            return f"does not load or run: {type(exc).__name__}: {str(exc)[:200]}"


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(argv[0])
    manifest = json.loads((root / "manifest.json").read_text())
    report, ok = {}, True
    for name, spec in manifest["models"].items():
        if spec["task"] not in ("cross_encoder", "sequence_classification"):
            continue
        folder = root / name
        pairs = spec["task"] == "cross_encoder"
        ours = _ours(folder, "model.fp32.onnx", pairs)
        theirs = _optimum_export(folder / "hf", pairs)
        if pairs:
            theirs = theirs[:, :1]
        diff = float(np.max(np.abs(ours.reshape(theirs.shape) - theirs)))
        ok &= diff < 1e-3
        report[name] = {"optimum_export_max_abs_diff": diff, "argmax_equal": bool(
            pairs or (ours.argmax(1) == theirs.argmax(1)).all()), "our_onnx_as_ortmodel": _load_ours_as_ortmodel(folder, ours, pairs)}
    import optimum.version
    import transformers

    print(json.dumps({"optimum": optimum.version.__version__, "transformers": transformers.__version__,
                      "models": report}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
