"""Crash safety: SIGKILL a bulk writer at pseudo-random points; every acknowledged add survives."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from apex_models.runtime import MemoryStore, load_bundle
from apex_models.runtime.store import DB_NAME

WORKER = Path(__file__).with_name("store_worker.py")
SRC = Path(__file__).resolve().parents[1] / "src"
KEY = bytes(range(50, 82))
KILLS = 12


def _env() -> dict[str, str]:
    return {**os.environ, "APEX_TEST_STORE_KEY": KEY.hex(), "OMP_NUM_THREADS": "1", "APEX_TEST_SNAPSHOT_EVERY": "2",
            "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}


def _run_and_kill(store: Path, bundle: Path, name: str, acks_before_kill: int, delay_s: float) -> list[str]:
    """Start a bulk writer, read acknowledgements, SIGKILL it mid-stream; return the acknowledged ids."""
    proc = subprocess.Popen([sys.executable, str(WORKER), "bulk", str(store), str(bundle), name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    acked: list[str] = []
    try:
        assert proc.stdout is not None
        assert json.loads(proc.stdout.readline() or "{}").get("ready"), proc.stderr.read()  # type: ignore[union-attr]
        while len(acked) < acks_before_kill * 3:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()  # type: ignore[union-attr]
            acked += json.loads(line)["ids"]
        time.sleep(delay_s)  # lands anywhere in embedding, sealing, inserting or committing
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    for line in rest.splitlines():  # acknowledged between our last read and the kill
        acked += json.loads(line)["ids"]
    assert proc.returncode == -signal.SIGKILL
    return acked


def test_sigkill_never_loses_an_acknowledged_add(tmp_path: Path, minilm_bundle: Path) -> None:
    rng = random.Random(20261125)
    store = tmp_path / "store"
    acked: list[str] = []
    for run in range(KILLS):
        acked += _run_and_kill(store, minilm_bundle, f"r{run}", rng.randint(1, 6), rng.uniform(0.0, 0.05))

    db = sqlite3.connect(store / DB_NAME)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    embedder = load_bundle(minilm_bundle).embedder()
    with MemoryStore.open(store, embedder, key=KEY) as memories:
        count = len(memories)
        assert count >= len(acked) and count % 3 == 0  # batches are all or nothing
        stats = memories.stats()
        assert stats["faiss_ntotal"] == count and stats["indexed"] == count and stats["keyword_docs"] == count
        for memory_id in acked:
            memory = memories.get(memory_id)  # present and decrypts
            assert memory is not None and memory.text.startswith("Crash run ")
            top_id, score = memories.nearest(memories.vector(memory_id), k=1)[0]  # type: ignore[arg-type]
            assert top_id == memory_id and score > 0.9999
        ids = [m.id for m in memories.memories()]
    # The workers sealed snapshots every two batches and some kills landed inside one: whether
    # the open above used one or not, it must equal a rebuild from the rows alone, and a
    # snapshot sealed now must restore the same.
    (store / "index.snapshot").unlink(missing_ok=True)
    with MemoryStore.open(store, embedder, key=KEY) as memories:
        assert not memories.opened_from_snapshot and [m.id for m in memories.memories()] == ids
        memories.save_snapshot()
    with MemoryStore.open(store, embedder, key=KEY) as memories:
        assert memories.opened_from_snapshot and [m.id for m in memories.memories()] == ids
    assert not list(store.glob(".index.snapshot.*.tmp"))  # a killed writer's leftover went with the next write
