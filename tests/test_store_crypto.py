"""Encryption at rest: keys, the key check, tampering, and no readable text, token or vector on disk."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from apex_models.runtime import MemoryStore, OnnxEmbedder, load_bundle
from apex_models.runtime.store import DB_NAME, StoreError

PASSPHRASE = "correct horse battery staple"
CANARY_TEXT = "zqxcanarytext"
CANARY_TAG = "zqxcanarytag"
CANARY_SOURCE = "zqxcanarysource"
FORGET_CANARY = "zqxforgetme"


@pytest.fixture(scope="module")
def embedder(minilm_bundle: Path) -> OnnxEmbedder:
    return load_bundle(minilm_bundle).embedder()


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def _found(folder: Path, needles: list[bytes]) -> list[str]:
    """Every (file, needle) where the needle occurs anywhere in the file's bytes."""
    hits = []
    for path in _files(folder):
        data = path.read_bytes()
        hits += [f"{path.name}: {needle[:24]!r}" for needle in needles if needle in data]
    return hits


def _canaries() -> list[bytes]:
    words = [CANARY_TEXT, CANARY_TAG, CANARY_SOURCE, FORGET_CANARY]
    return [w.encode() for w in words] + [w.encode("utf-16-le") for w in words]


def _fill(store: MemoryStore) -> tuple[str, str]:
    planted = store.add(f"The deploy token {CANARY_TEXT} rotates weekly", kind="decision",
                        tags=[CANARY_TAG, "ops"], source=f"docs/{CANARY_SOURCE}.md")
    doomed = store.add(f"Temporary credential {FORGET_CANARY} for the staging bucket", kind="note",
                       tags=["tmp"], source="notes/tmp.md")
    store.add_many([{"text": f"Ordinary note number {i} about builds and tests", "tags": ["misc"]}
                    for i in range(20)])
    store.link(planted, doomed, "mentions")
    return planted, doomed


def test_passphrase_roundtrip_and_wrong_key(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    folder = tmp_path / "s"
    with MemoryStore.open(folder, embedder, passphrase=PASSPHRASE) as store:
        planted, _ = _fill(store)
    with MemoryStore.open(folder, embedder, passphrase=PASSPHRASE) as store:
        assert store.get(planted).text.startswith("The deploy token")  # type: ignore[union-attr]
        assert store.search(f"deploy token {CANARY_TEXT}", k=1)[0].id == planted
    with pytest.raises(StoreError, match=r"^wrong key for store "):
        MemoryStore.open(folder, embedder, passphrase="Correct horse battery staple")
    with pytest.raises(StoreError, match=r"^wrong key for store "):
        MemoryStore.open(folder, embedder, key=bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        MemoryStore.open(folder, embedder, key=b"short")
    meta = dict(sqlite3.connect(folder / DB_NAME).execute("SELECT key, value FROM meta").fetchall())
    kdf = json.loads(meta["kdf"])
    assert kdf["name"] == "scrypt" and kdf["n"] >= 2**15 and kdf["r"] >= 8 and len(kdf["salt"]) == 32


def test_raw_key_store(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    key = bytes(range(100, 132))
    with MemoryStore.open(tmp_path / "s", embedder, key=key) as store:
        memory_id = store.add("raw keys skip the passphrase stretching")
    with MemoryStore.open(tmp_path / "s", embedder, key=key) as store:
        assert store.get(memory_id) is not None
    with pytest.raises(StoreError, match="wrong key"):
        MemoryStore.open(tmp_path / "s", embedder, passphrase=PASSPHRASE)


def test_nothing_readable_on_disk(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    folder = tmp_path / "s"
    vector = embedder.encode_documents([f"The deploy token {CANARY_TEXT} rotates weekly"])[0]
    vector_needles = [vector[:8].tobytes(), vector[100:108].tobytes()]
    with MemoryStore.open(folder, embedder, passphrase=PASSPHRASE) as store:
        _fill(store)
        stored = store.nearest(vector, k=1)
        assert stored[0][1] == pytest.approx(1.0, abs=1e-5)  # the stored vector is this one
        assert {p.name for p in _files(folder)} >= {DB_NAME, f"{DB_NAME}-wal"}
        assert _found(folder, _canaries() + vector_needles) == []  # while open: db, WAL, shm
    assert _found(folder, _canaries() + vector_needles) == []      # after close (checkpointed)


def test_forget_leaves_no_trace(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    folder = tmp_path / "s"
    with MemoryStore.open(folder, embedder, passphrase=PASSPHRASE) as store:
        planted, doomed = _fill(store)
        store.update(doomed, tags=["tmp", "rotated"])  # a second version of its blobs
        db = sqlite3.connect(folder / DB_NAME)
        record, vector = db.execute("SELECT record, vector FROM memories WHERE id = ?", (doomed,)).fetchone()
        label = db.execute("SELECT label FROM relations WHERE dst = ?", (doomed,)).fetchone()[0]
        db.close()
        assert _found(folder, [record[12:44], doomed.encode()]) != []  # the scan does see ciphertext
        doomed_vector = store.vector(doomed)
        store._keyword.rebuild()  # put its words in the bm25s vocabulary, the hardest case
        assert store.forget(doomed) is True
        assert store.get(doomed) is None and all(h.id != doomed for h in store.search(FORGET_CANARY, k=30))
        assert store.get(planted).relations == []  # type: ignore[union-attr]
        needles = [doomed.encode(), record[12:44], record[-32:], vector[12:44], label]
        assert _found(folder, needles + _canaries()) == []
        assert (folder / f"{DB_NAME}-wal").stat().st_size == 0
        store.search("staging bucket", k=3)  # merges the keyword index without the forgotten words
        assert FORGET_CANARY.lower() not in store._keyword._bm25.vocab_dict  # type: ignore[union-attr]
        in_faiss = store._dense._index.reconstruct_n(0, store._dense.ntotal)
        assert not (in_faiss @ doomed_vector > 0.9999).any()  # zeroed in this process too
    assert _found(folder, needles + _canaries()) == []
    with MemoryStore.open(folder, embedder, passphrase=PASSPHRASE) as store:
        assert len(store) == 21 and store.forget(doomed) is False


def test_tampered_or_swapped_rows_fail_loudly(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    folder = tmp_path / "s"
    key = bytes(range(32))
    with MemoryStore.open(folder, embedder, key=key) as store:
        a, b = store.add("first memory"), store.add("second memory")
    db = sqlite3.connect(folder / DB_NAME)
    rec_a = db.execute("SELECT record FROM memories WHERE id = ?", (a,)).fetchone()[0]
    rec_b = db.execute("SELECT record FROM memories WHERE id = ?", (b,)).fetchone()[0]
    with db:  # swap the two encrypted records: each is bound to its own id
        db.execute("UPDATE memories SET record = ? WHERE id = ?", (rec_b, a))
        db.execute("UPDATE memories SET record = ? WHERE id = ?", (rec_a, b))
    db.close()
    with pytest.raises(StoreError, match="failed authentication"):
        MemoryStore.open(folder, embedder, key=key)
    db = sqlite3.connect(folder / DB_NAME)
    with db:  # put them back, then flip one bit of a vector
        db.execute("UPDATE memories SET record = ? WHERE id = ?", (rec_a, a))
        db.execute("UPDATE memories SET record = ? WHERE id = ?", (rec_b, b))
        vec = bytearray(db.execute("SELECT vector FROM memories WHERE id = ?", (a,)).fetchone()[0])
        vec[40] ^= 1
        db.execute("UPDATE memories SET vector = ? WHERE id = ?", (bytes(vec), a))
    db.close()
    with pytest.raises(StoreError, match="vector of memory .* failed authentication"):
        MemoryStore.open(folder, embedder, key=key)


def test_vectors_decrypt_to_the_embedding(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    with MemoryStore.open(tmp_path / "s", embedder, key=bytes(32)) as store:
        text = "Vectors are sealed but must come back bit for bit"
        memory_id = store.add(text)
        expected = embedder.encode_documents([text])[0]
        got = store._dense.vectors([store._records.num_of(memory_id)])[0]
        np.testing.assert_allclose(got, expected, atol=1e-6)
