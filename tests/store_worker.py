"""A separate process that writes to or reads from a memory store (for the concurrency and crash tests).

    python tests/store_worker.py writer STORE BUNDLE NAME COUNT   # adds COUNT memories one by one
    python tests/store_worker.py reader STORE BUNDLE STOPFILE      # searches until STOPFILE exists
    python tests/store_worker.py bulk STORE BUNDLE NAME            # adds batches forever, acking ids
                                                                   # (and with APEX_TEST_SNAPSHOT_EVERY=N
                                                                   # seals an index snapshot every N batches)

The raw key comes from the APEX_TEST_STORE_KEY environment variable (hex). Results are
JSON lines on stdout; `bulk` prints one line per committed batch, flushed at once, so
the parent knows exactly which adds were acknowledged before it kills the process.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from apex_models.runtime import MemoryStore, load_bundle


def _open(store: str, bundle: str) -> MemoryStore:
    embedder = load_bundle(bundle, verify=False).embedder()
    return MemoryStore.open(Path(store), embedder, key=bytes.fromhex(os.environ["APEX_TEST_STORE_KEY"]))


def writer(store: str, bundle: str, name: str, count: int) -> None:
    ids = []
    with _open(store, bundle) as memories:
        for i in range(count):
            ids.append(memories.add(f"Writer {name} remembers item {i}: rotate the {name} cache key {i}",
                                    kind="note", tags=[name]))
    print(json.dumps({"writer": name, "ids": ids}), flush=True)


def reader(store: str, bundle: str, stopfile: str) -> None:
    searches, seen = 0, 0
    with _open(store, bundle) as memories:
        while not Path(stopfile).exists():
            hits = memories.search("which cache key do we rotate", k=5)
            seen = max(seen, memories.stats()["count"])
            assert all(h.text for h in hits)
            searches += 1
            time.sleep(0.01)
    print(json.dumps({"searches": searches, "max_count_seen": seen}), flush=True)


def bulk(store: str, bundle: str, name: str) -> None:
    snapshot_every = int(os.environ.get("APEX_TEST_SNAPSHOT_EVERY", "0"))  # batches between index snapshots
    with _open(store, bundle) as memories:
        print(json.dumps({"ready": True}), flush=True)
        i = 0
        while True:
            batch = [{"text": f"Crash run {name} bulk memory {i + j}: the {name}-{i + j} build step caches wheels",
                      "tags": [name]} for j in range(3)]
            ids = memories.add_many(batch)
            print(json.dumps({"ids": ids}), flush=True)
            i += 3
            if snapshot_every and (i // 3) % snapshot_every == 0:
                memories.save_snapshot()  # a kill may land inside it too


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "writer":
        writer(args[0], args[1], args[2], int(args[3]))
    elif mode == "reader":
        reader(args[0], args[1], args[2])
    elif mode == "bulk":
        bulk(args[0], args[1], args[2])
    else:
        raise SystemExit(f"unknown mode {mode}")
