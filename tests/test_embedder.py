"""OnnxEmbedder invariances: batching, padding and order must not change a text's vector."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from apex_models.export.parity import probe_texts
from apex_models.runtime import OnnxEmbedder, load_bundle
from apex_models.runtime.models import BULK_MIN_ROWS


@pytest.fixture(scope="module")
def fp32(minilm_bundle: Path) -> OnnxEmbedder:
    return load_bundle(minilm_bundle).embedder(precision="fp32")


@pytest.fixture(scope="module")
def int8(minilm_bundle: Path) -> OnnxEmbedder:
    return load_bundle(minilm_bundle).embedder(precision="int8")


def test_attributes(fp32: OnnxEmbedder, int8: OnnxEmbedder) -> None:
    assert (fp32.precision, fp32.dimension) == ("fp32", 384)
    assert int8.precision == "int8"


def test_batch_invariance(fp32: OnnxEmbedder) -> None:
    texts = probe_texts(16)
    batched = fp32.encode(texts, max_length=256, batch_size=16)
    single = np.stack([fp32.encode([t], max_length=256)[0] for t in texts])
    np.testing.assert_allclose(batched, single, atol=1e-5)
    small_batches = fp32.encode(texts, max_length=256, batch_size=3)
    np.testing.assert_allclose(batched, small_batches, atol=1e-5)


def test_padding_invariance(fp32: OnnxEmbedder, int8: OnnxEmbedder) -> None:
    short, long = "sort a list", "def handler(event):\n" + "    total += compute(event, options)\n" * 20
    alone = fp32.encode([short], max_length=256)[0]
    with_long = fp32.encode([long, short], max_length=256)[1]
    np.testing.assert_allclose(alone, with_long, atol=1e-5)
    # Dynamic int8 quantises activations with one scale per batch tensor, so batch mates
    # move a vector slightly (measured cosine 0.994); it must stay within the int8 gate.
    alone = int8.encode([short], max_length=256)[0]
    with_long = int8.encode([long, short], max_length=256)[1]
    assert float(alone @ with_long) >= 0.98


def test_large_batches_go_to_a_bulk_session_that_gives_the_same_vectors(minilm_bundle: Path) -> None:
    bundle = load_bundle(minilm_bundle)
    embedder = bundle.embedder(precision="int8", bulk_threads=2)
    assert embedder.sessions._bulk is None  # opening a store does not pay for it
    texts = probe_texts(BULK_MIN_ROWS)
    embedder.encode_documents(texts[:-1])
    assert embedder.sessions._bulk is None  # below the threshold: the one-thread session
    bulk = embedder.encode_documents(texts)
    assert embedder.sessions._bulk is not None and embedder.sessions._bulk is not embedder.session
    single = bundle.embedder(precision="int8", bulk_threads=1)
    assert single.sessions._bulk is single.session  # no second session when it would not add threads
    np.testing.assert_allclose(bulk, single.encode_documents(texts), atol=1e-6)


def test_order_is_restored(fp32: OnnxEmbedder) -> None:
    texts = probe_texts(10)
    forward = fp32.encode(texts, max_length=64)
    backward = fp32.encode(texts[::-1], max_length=64)[::-1]
    np.testing.assert_allclose(forward, backward, atol=1e-5)


def test_unit_norm_and_dtype(int8: OnnxEmbedder) -> None:
    vectors = int8.encode_documents(probe_texts(20), progress=False)
    assert vectors.dtype == np.float32 and vectors.shape == (20, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_empty_list(int8: OnnxEmbedder) -> None:
    out = int8.encode_queries([])
    assert out.shape == (0, 384) and out.dtype == np.float32


def test_truncation_uses_spec_lengths(fp32: OnnxEmbedder) -> None:
    long = " ".join(f"token{i}" for i in range(600))
    # query length 64 and document length 256 truncate differently, so the vectors differ
    q = fp32.encode_queries([long])[0]
    d = fp32.encode_documents([long])[0]
    assert float(q @ d) < 0.9999
    np.testing.assert_allclose(q, fp32.encode([long], max_length=64)[0], atol=1e-6)
    np.testing.assert_allclose(d, fp32.encode([long], max_length=256)[0], atol=1e-6)


def test_progress_bar_runs(int8: OnnxEmbedder) -> None:
    assert int8.encode(probe_texts(5), max_length=32, batch_size=2, progress=True).shape == (5, 384)
