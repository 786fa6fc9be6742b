"""Several real processes on one store: 3 writers and 2 readers at once, no lost write, no error."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from apex_models.runtime import MemoryStore, load_bundle
from apex_models.runtime.store import DB_NAME

WORKER = Path(__file__).with_name("store_worker.py")
SRC = Path(__file__).resolve().parents[1] / "src"
KEY = bytes(range(7, 39))


def _env() -> dict[str, str]:
    return {**os.environ, "APEX_TEST_STORE_KEY": KEY.hex(), "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(WORKER), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env())


def test_three_writers_two_readers(tmp_path: Path, minilm_bundle: Path) -> None:
    store, stop = tmp_path / "store", tmp_path / "stop"
    embedder = load_bundle(minilm_bundle).embedder()
    with MemoryStore.open(store, embedder, key=KEY) as memories:  # this process reads along too
        readers = [_spawn("reader", str(store), str(minilm_bundle), str(stop)) for _ in range(2)]
        writers = [_spawn("writer", str(store), str(minilm_bundle), f"w{i}", "50") for i in range(3)]
        counts = []
        for proc in writers:
            while proc.poll() is None:
                memories.search("rotate the cache key", k=3)  # applies what the others committed
                counts.append(memories.stats()["count"])
                time.sleep(0.05)
        stop.touch()
        memories.search("rotate the cache key", k=3)
        assert memories.stats()["count"] == 150 and memories.stats()["indexed"] == 150  # caught up in place
        outputs = [p.communicate(timeout=120) for p in writers + readers]
    for proc, (out, err) in zip(writers + readers, outputs):
        assert proc.returncode == 0, err[-3000:]
    ids = [i for out, _ in outputs[:3] for i in json.loads(out)["ids"]]
    for out, _ in outputs[3:]:
        report = json.loads(out)
        assert report["searches"] > 0 and report["max_count_seen"] > 0
    assert len(ids) == 150 and len(set(ids)) == 150
    assert counts == sorted(counts)  # this reader saw the store grow, never shrink

    db = sqlite3.connect(store / DB_NAME)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with MemoryStore.open(store, embedder, key=KEY) as memories:
        assert len(memories) == 150 and memories.stats()["indexed"] == 150
        for memory_id in ids:
            memory = memories.get(memory_id)
            assert memory is not None
            assert memories.nearest(memories.vector(memory_id), k=1)[0][0] == memory_id  # type: ignore[arg-type]
        name = memories.get(ids[75]).tags[0]  # type: ignore[union-attr]
        hits = memories.search(f"{name} cache key 25", k=3, tags=[name])
        assert hits and all(h.tags == [name] for h in hits)
