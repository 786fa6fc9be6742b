"""The sealed index snapshot: an open from it equals the state it was taken from plus what
was written since, holds nothing readable or removed, and is refused when it is not this
database's."""

from __future__ import annotations

import pickle
import sqlite3
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from apex_models.runtime import MemoryStore, OnnxEmbedder, load_bundle
from apex_models.runtime.records import Records
from apex_models.runtime.snapshot import SNAPSHOT_NAME, read_snapshot, write_snapshot
from apex_models.runtime.store import DB_NAME, StoreConfig

KEY = bytes(range(7, 39))
# Snapshot whenever asked or anything changed; HNSW from 100 memories, so the approximate
# index (the expensive one to rebuild) is what travels.
ALWAYS = StoreConfig(snapshot_min_memories=0, snapshot_stale_fraction=0.0, hnsw_threshold=100)
NEVER = replace(ALWAYS, snapshot_min_memories=10**9)
TOPICS = ["parse json config", "retry http request", "sqlite migration", "docker build cache",
          "pytest fixture scope", "git rebase conflict", "numpy broadcasting error", "asyncio task cancel"]
QUERIES = ["how do I retry a request", "json config parsing", "rebase conflict", "TypeError broadcasting",
           "fixture", "zzz-nothing-matches"]


@pytest.fixture(scope="module")
def embedder(minilm_bundle: Path) -> OnnxEmbedder:
    return load_bundle(minilm_bundle).embedder()


def _items(start: int, stop: int) -> list[dict]:
    return [{"text": f"Memory {i}: {TOPICS[i % len(TOPICS)]} (variant {i // len(TOPICS)}) in module_{i % 13}",
             "kind": ["note", "code", "error", "decision"][i % 4], "tags": [f"t{i % 5}"],
             "source": f"src/pkg{i % 3}/file{i}.py"} for i in range(start, stop)]


def _answers(store: MemoryStore) -> list:
    """Everything a caller can observe of a search: ids, scores and the why of each hit."""
    out = []
    for query in QUERIES:
        for kwargs in ({}, {"mode": "dense"}, {"mode": "keyword"}, {"kind": "error"}, {"tags": ["t2"]},
                       {"source_prefix": "src/pkg1"}):
            out.append([(h.id, round(h.score, 9), h.why) for h in store.search(query, k=6, **kwargs)])
    return out


def test_open_from_snapshot_equals_the_state_it_was_taken_from(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    folder = tmp_path / "s"
    with MemoryStore.open(folder, embedder, key=KEY, config=ALWAYS) as writer:
        ids = writer.add_many(_items(0, 240))
        writer.delete_many(ids[:12])
        writer.update(ids[20], text="Memory 20 now explains numpy broadcasting errors in detail")
        writer.search("warm up the keyword index")  # main segment merged, then a delta on top:
        writer.add_many(_items(240, 260))           # the snapshot carries both segments
        assert writer.save_snapshot() > 0
        assert writer.stats()["dense_index"] == "hnsw"
        # Written after the snapshot by another handle (as another process would):
        with MemoryStore.open(folder, embedder, key=KEY, config=NEVER) as other:
            assert other.opened_from_snapshot
            other.add_many(_items(260, 300))
            other.delete(ids[30])
            other.update(ids[40], kind="error", tags=["t2", "moved"])
        writer.refresh()
        expected, expected_memories = _answers(writer), writer.memories()

        with MemoryStore.open(folder, embedder, key=KEY, config=NEVER) as fast:
            assert fast.opened_from_snapshot
            assert fast.stats()["count"] == 240 - 12 + 20 + 40 - 1 == len(fast)
            assert _answers(fast) == expected  # identical scores and explanations, not just ids
            assert fast.memories() == expected_memories
            assert fast.get(ids[40]).kind == "error"  # type: ignore[union-attr]
            assert fast.get(ids[30]) is None and all(h.id != ids[30] for h in fast.search("Memory 30", k=20))

    (folder / SNAPSHOT_NAME).unlink()
    with MemoryStore.open(folder, embedder, key=KEY, config=NEVER) as slow:  # the full rebuild agrees
        assert not slow.opened_from_snapshot
        assert slow.memories() == expected_memories


def test_snapshot_is_sealed_and_holds_nothing_removed(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    folder = tmp_path / "s"
    doomed_text = "zqxsnapgone credentials for the old bucket"
    kept_text = "zqxsnapkept rotation schedule for deploy keys"
    with MemoryStore.open(folder, embedder, key=KEY, config=ALWAYS) as store:
        store.add_many(_items(0, 150))
        doomed, kept = store.add(doomed_text, tags=["zqxsnaptag"]), store.add(kept_text)
        store.search("merge the keyword index with the doomed words in it")
        doomed_vector, kept_vector = store.vector(doomed), store.vector(kept)
        assert store.stats()["dense_index"] == "hnsw"  # whose storage is fp16
        store.delete(doomed)  # a plain delete: no scrub in this process
        store.save_snapshot()
        token = dict(sqlite3.connect(folder / DB_NAME).execute("SELECT key, value FROM meta").fetchall())[
            "snapshot_token"]
        state = read_snapshot(folder, store._sealer, token)
    raw = (folder / SNAPSHOT_NAME).read_bytes()
    for needle in [b"zqxsnapkept", b"zqxsnapgone", b"zqxsnaptag", b"rotation schedule"]:
        assert needle not in raw  # sealed
    plain = pickle.dumps(state, protocol=5)
    assert b"zqxsnapkept" in plain                                  # the check can see words...
    assert b"zqxsnapgone" not in plain and b"zqxsnaptag" not in plain  # ...but not removed ones
    stored_ids = [i.decode() for i in state["entries"]["ids"]]
    assert doomed not in stored_ids and kept in stored_ids
    assert doomed_vector is not None and kept_vector is not None
    assert kept_vector[:6].astype(np.float16).tobytes() in plain  # the check can see HNSW's fp16 vectors...
    for encoding in (np.float32, np.float16):                     # ...and the removed one was zeroed
        assert doomed_vector[:6].astype(encoding).tobytes() not in plain


def test_a_removed_memorys_kind_leaves_the_next_snapshot(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    """A kind name is data too: once no memory has it, a snapshot written by a process that
    opened from an older snapshot (the records it restored keep their kind table) omits it."""
    folder = tmp_path / "s"
    with MemoryStore.open(folder, embedder, key=KEY, config=ALWAYS) as store:
        store.add_many(_items(0, 20))
        doomed = store.add("quarterly numbers", kind="zqxkindgone")
        store.save_snapshot()
    with MemoryStore.open(folder, embedder, key=KEY, config=ALWAYS) as store:
        assert store.opened_from_snapshot
        store.delete(doomed)
        before = {m.id: m.kind for m in store.memories()}
        store.save_snapshot()
        token = dict(sqlite3.connect(folder / DB_NAME).execute("SELECT key, value FROM meta").fetchall())[
            "snapshot_token"]
        state = read_snapshot(folder, store._sealer, token)
    assert b"zqxkindgone" not in pickle.dumps(state, protocol=5)
    with MemoryStore.open(folder, embedder, key=KEY, config=NEVER) as store:
        assert store.opened_from_snapshot and {m.id: m.kind for m in store.memories()} == before
        assert set(store.stats()["kinds"]) == {"note", "code", "error", "decision"}
        assert len(store.search("fixture", k=3, kind="error")) == 3


def test_forget_removes_the_snapshot(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    folder = tmp_path / "s"
    with MemoryStore.open(folder, embedder, key=KEY, config=NEVER) as store:
        ids = store.add_many(_items(0, 50))
        store.save_snapshot()
        assert (folder / SNAPSHOT_NAME).is_file()
        assert store.forget(ids[3])
        assert not (folder / SNAPSHOT_NAME).is_file()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a removed snapshot is not worth a warning
        with MemoryStore.open(folder, embedder, key=KEY, config=ALWAYS) as store:
            assert not store.opened_from_snapshot and len(store) == 49
    with MemoryStore.open(folder, embedder, key=KEY, config=NEVER) as store:  # the one close() wrote
        assert store.opened_from_snapshot and len(store) == 49 == store.stats()["count"]
        assert store.get(ids[3]) is None and ids[3] not in {m.id for m in store.memories()}


@pytest.mark.parametrize("damage", ["flip", "truncate", "other_token"])
def test_a_damaged_or_foreign_snapshot_is_refused(tmp_path: Path, embedder: OnnxEmbedder, damage: str) -> None:
    folder = tmp_path / "s"
    with MemoryStore.open(folder, embedder, key=KEY, config=ALWAYS) as store:
        store.add_many(_items(0, 120))
        store.save_snapshot()
        expected = [h.id for h in store.search(QUERIES[0], k=6, mode="dense")]
    path = folder / SNAPSHOT_NAME
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 1
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[:-100]))
    else:  # the database moved on (restored from a backup, say): its token no longer names this file
        with sqlite3.connect(folder / DB_NAME) as db:
            db.execute("UPDATE meta SET value = 'f' || value WHERE key = 'snapshot_token'")
    with pytest.warns(UserWarning, match="index snapshot of .* not used"):
        store = MemoryStore.open(folder, embedder, key=KEY, config=NEVER)
    with store:
        assert not store.opened_from_snapshot
        assert [h.id for h in store.search(QUERIES[0], k=6, mode="dense")] == expected


@pytest.mark.parametrize("version, used", [(b"1", True), (b"2", True), (b"3", True), (b"4", False)])
def test_snapshot_format_versions(tmp_path: Path, embedder: OnnxEmbedder, version: bytes, used: bool) -> None:
    """This reader takes versions 1 to 3 (its compatibility paths restore the older layouts,
    see the next test); a newer file is refused with a warning and the store opens the slow
    way, which is what an older reader does with the files written now."""
    folder = tmp_path / "s"
    with MemoryStore.open(folder, embedder, key=KEY, config=ALWAYS) as store:
        store.add_many(_items(0, 120))
        store.save_snapshot()
        expected = [h.id for h in store.search(QUERIES[1], k=6)]
    path = folder / SNAPSHOT_NAME
    data = path.read_bytes()
    assert data.split(b" ", 2)[1] == b"3"  # what this version writes
    path.write_bytes(data.replace(b" 3 ", b" " + version + b" ", 1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = MemoryStore.open(folder, embedder, key=KEY, config=NEVER)
    with store:
        assert store.opened_from_snapshot is used
        assert any("not a snapshot of this format" in str(w.message) for w in caught) is not used
        assert [h.id for h in store.search(QUERIES[1], k=6)] == expected


def test_a_snapshot_with_records_as_lists_still_opens(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    """Versions 1 and 2 kept the records as one list per field; such a file restores the
    same records and answers, and the next snapshot is written as columns."""
    folder = tmp_path / "s"
    with MemoryStore.open(folder, embedder, key=KEY, config=ALWAYS) as store:
        ids = store.add_many(_items(0, 130))
        store.save_snapshot()
        expected, expected_memories = _answers(store), store.memories()
        token = dict(sqlite3.connect(folder / DB_NAME).execute("SELECT key, value FROM meta").fetchall())[
            "snapshot_token"]
        state = read_snapshot(folder, store._sealer, token)
        entries = list(Records.from_columns(state["entries"]).entries())
        state["entries"] = {field: [getattr(e, field) for e in entries] for field in
                            ("id", "text", "kind", "tags", "source", "created_at", "updated_at")}
        state["entries"].update(nums=np.array([e.num for e in entries]),
                                created_ts=np.array([e.created_ts for e in entries]))
        write_snapshot(folder, store._sealer, token, state)
    with MemoryStore.open(folder, embedder, key=KEY, config=NEVER) as old:
        assert old.opened_from_snapshot
        assert _answers(old) == expected and old.memories() == expected_memories
        old.delete(ids[3])
        old.save_snapshot()
    with MemoryStore.open(folder, embedder, key=KEY, config=NEVER) as new:
        assert new.opened_from_snapshot and len(new) == 129
        assert new.memories() == [m for m in expected_memories if m.id != ids[3]]


def test_close_writes_a_snapshot_only_when_due(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    folder = tmp_path / "s"
    config = replace(ALWAYS, snapshot_min_memories=60, snapshot_stale_fraction=0.1)
    path = folder / SNAPSHOT_NAME
    vectors = np.asarray(embedder.encode_documents([x["text"] for x in _items(0, 90)]))
    with MemoryStore.open(folder, embedder, key=KEY, config=config) as store:
        store.add_many(_items(0, 50), vectors=vectors[:50])
    assert not path.exists()                      # below snapshot_min_memories
    with MemoryStore.open(folder, embedder, key=KEY, config=config) as store:
        store.add_many(_items(50, 80), vectors=vectors[50:80])
    assert path.is_file()                         # 80 memories, all new since no snapshot
    first = path.stat().st_mtime_ns
    with MemoryStore.open(folder, embedder, key=KEY, config=config) as store:
        assert store.opened_from_snapshot
        store.add_many(_items(80, 85), vectors=vectors[80:85])
    assert path.stat().st_mtime_ns == first       # 5 of 85 changed: under 10 %, not due
    with MemoryStore.open(folder, embedder, key=KEY, config=config) as store:
        store.add_many(_items(85, 90), vectors=vectors[85:90])
    assert path.stat().st_mtime_ns != first       # 10 of 90 changed since: due
    with MemoryStore.open(folder, embedder, key=KEY, config=config) as store:
        assert store.opened_from_snapshot and len(store) == 90 == store.stats()["count"]
        assert not store._keyword._needs_merge()  # merged before it was sealed: no rebuild on first search


def test_chunked_segments_open_in_place_read_only_and_every_chunk_is_authenticated(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Segments cut into several chunks open into one buffer each (Sealer.open_into) and
    come back equal and read-only; a flipped byte in any chunk refuses the whole file."""
    from apex_models.runtime import snapshot
    from apex_models.runtime.crypto import Sealer
    from apex_models.runtime.snapshot import SnapshotError

    monkeypatch.setattr(snapshot, "CHUNK_BYTES", 1000)        # 3 chunks for the pickle, 5 for the array
    monkeypatch.setattr(snapshot, "OUT_OF_BAND_BYTES", 4096)
    state = {"vector": np.arange(1200, dtype=np.float32), "words": [f"word{i}" for i in range(200)], "n": 7}
    sealer = Sealer(KEY)
    size = write_snapshot(tmp_path, sealer, "tok", state)
    header = (tmp_path / SNAPSHOT_NAME).read_bytes().split(b"\n", 1)[0].split(b" ")
    assert header[3] == b"3,5"  # the layout: chunks per segment
    back = read_snapshot(tmp_path, sealer, "tok")
    assert back["words"] == state["words"] and back["n"] == 7
    np.testing.assert_array_equal(back["vector"], state["vector"])
    assert not back["vector"].flags.writeable
    raw = bytearray((tmp_path / SNAPSHOT_NAME).read_bytes())
    for at in (len(raw) // 3, len(raw) - 20):  # inside the pickle's chunks, inside the array's last
        bad = bytearray(raw)
        bad[at] ^= 1
        (tmp_path / SNAPSHOT_NAME).write_bytes(bytes(bad))
        with pytest.raises(SnapshotError, match="authentication"):
            read_snapshot(tmp_path, sealer, "tok")
    assert size == len(raw)
