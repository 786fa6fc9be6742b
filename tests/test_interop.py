"""The bundle's files load outside our runtime and agree with it: plain onnxruntime,
transformers (safetensors) and sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest

TEXTS = ["read a json file into a dict", "def add(a, b):\n    return a + b", "kubectl rollout restart deployment"]


@pytest.fixture(scope="module")
def reference(minilm_bundle):
    from apex_models.runtime import load_bundle

    return load_bundle(minilm_bundle).embedder(precision="fp32").encode_documents(TEXTS)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_plain_onnxruntime(minilm_bundle, reference) -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_bundle / "embedder" / "tokenizer.json"))
    tok.enable_padding()
    tok.enable_truncation(256)
    enc = tok.encode_batch(TEXTS)
    session = ort.InferenceSession(str(minilm_bundle / "embedder" / "model.fp32.onnx"),
                                   providers=["CPUExecutionProvider"])
    out = session.run(["sentence_embedding"], {"input_ids": np.array([e.ids for e in enc], dtype=np.int64),
                                               "attention_mask": np.array([e.attention_mask for e in enc],
                                                                          dtype=np.int64)})[0]
    assert _cosines(out, reference).min() >= 0.9999


def test_transformers_loads_the_safetensors(minilm_bundle, reference) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    from apex_models.models.embedder import embed_batch

    path = minilm_bundle / "embedder" / "hf"
    model, tok = AutoModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    batch = tok(TEXTS, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        out = embed_batch(model, batch["input_ids"], batch["attention_mask"]).numpy()
    assert _cosines(out, reference).min() >= 0.9999


def test_sentence_transformers_loads_the_bundle(minilm_bundle, reference) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(minilm_bundle / "embedder" / "hf"), device="cpu")
    out = model.encode(TEXTS, convert_to_numpy=True)
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-4)   # Normalize is part of the model
    assert _cosines(out, reference).min() >= 0.9999
