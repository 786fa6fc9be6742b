"""The memory store's index snapshot: its in-memory state, sealed with the store's key.

Opening a store without one decrypts every row, tokenises every text and builds HNSW
from scratch: about 18 s at 100k memories on a 2-core machine. The snapshot keeps what
that produces (the records, the FAISS index, the BM25 index) in one file,
`index.snapshot`, so an open loads it and applies only the rows written since.

File format: a header line (magic, version, token, layout) and then sealed chunks. The
state is pickled (protocol 5) with its large arrays (the FAISS index, token ids, BM25
matrices) as out-of-band buffers, so none is copied into or out of the pickle stream:
segment 0 is the pickle, each further segment one buffer, and each segment is cut into
chunks of at most CHUNK_BYTES. The layout (chunks per segment) is in the header, and
every chunk is sealed with AES-256-GCM under associated data that names the token, the
layout and the chunk's place, so chunks cannot be reordered, dropped or spliced in from
another snapshot. The pickle is only unpickled after every chunk authenticated: only a
holder of the store's key can have written it. Arrays restored from out-of-band buffers
are read-only; a caller copies what it will change. They also carry fresh dtype objects
(unpickling makes one per array), which numpy's fast paths do not recognise: code that
keeps a restored array on a hot path views it with `canonical` (the keyword index does;
the other restored arrays become lists at once).

The token ties the file to the database: the store writes it into its meta table in the
same transaction that publishes the file, and an open uses a snapshot only when the two
match. A crash between writing the file and committing leaves them unequal (the store
opens the slow way, nothing is lost); a database restored from a backup does not pick up
a newer snapshot.
"""

from __future__ import annotations

import mmap
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from apex_models.runtime.crypto import DecryptionError, Sealer

SNAPSHOT_NAME = "index.snapshot"
MAGIC = b"apex-memory-snapshot"
# 2: the keyword index's BM25 matrix as arrays (no pickled bm25s object), fp16 HNSW, kind
# and tag postings. 3: the records as columns (runtime/records.py). Older files still
# load; older readers refuse newer files as "not a snapshot of this format" and rebuild
# from the rows, as they should.
FORMAT_VERSION = 3
READABLE_VERSIONS = (b"1", b"2", b"3")
CHUNK_BYTES = 1 << 30  # AES-GCM via cryptography takes at most 2**31 - 1 bytes at once
OUT_OF_BAND_BYTES = 1 << 20     # buffers this large travel beside the pickle, not inside it


class SnapshotError(Exception):
    """The snapshot cannot be used (missing, torn, from another database or another key)."""


def canonical(array: np.ndarray) -> np.ndarray:
    """The same memory typed with numpy's own dtype instance (a view, no copy).

    numpy's fast paths test dtypes by identity: np.add.at, which bm25s scores with, took
    its slow loop on restored arrays, so a keyword index restored from a snapshot scored
    20x slower than a freshly built one (2.0 ms against 0.1 ms a query at 100k memories;
    16 ms a keyword search at 1M).
    """
    return array.view(np.dtype(array.dtype.str))


def _aad(token: str, layout: str, segment: int, chunk: int) -> bytes:
    return f"snapshot|{token}|{layout}|{segment}|{chunk}".encode()


def write_snapshot(folder: Path, sealer: Sealer, token: str, state: dict[str, Any]) -> int:
    """Seal `state` into folder/index.snapshot atomically (temporary file, fsync, rename).

    The caller holds the store's write lock. Returns the file's size in bytes.
    """
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        raw = buffer.raw()
        if raw.nbytes < OUT_OF_BAND_BYTES:
            return True  # small: in the pickle stream
        buffers.append(raw)
        return False

    payload = pickle.dumps(state, protocol=5, buffer_callback=out_of_band)
    segments = [memoryview(payload)] + buffers
    chunked = [[seg[i:i + CHUNK_BYTES] for i in range(0, seg.nbytes, CHUNK_BYTES)] or [seg[:0]]
               for seg in segments]
    layout = ",".join(str(len(chunks)) for chunks in chunked)
    target = folder / SNAPSHOT_NAME
    for leftover in folder.glob(f".{SNAPSHOT_NAME}.*.tmp"):  # from a writer killed mid-write (the
        leftover.unlink(missing_ok=True)                      # caller holds the store's write lock)
    tmp = folder / f".{SNAPSHOT_NAME}.{os.getpid()}.tmp"
    try:
        with tmp.open("wb") as handle:
            handle.write(b"%s %d %s %s\n" % (MAGIC, FORMAT_VERSION, token.encode(), layout.encode()))
            for segment, chunks in enumerate(chunked):
                for index, chunk in enumerate(chunks):
                    blob = sealer.seal(chunk, _aad(token, layout, segment, index))
                    handle.write(len(blob).to_bytes(8, "little"))
                    handle.write(blob)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_folder(folder)
    return target.stat().st_size


def read_snapshot(folder: Path, sealer: Sealer, token: str) -> dict[str, Any]:
    """The state sealed under `token`; SnapshotError when it is absent, torn or not this one."""
    path = folder / SNAPSHOT_NAME
    try:
        with open(path, "rb") as fh:
            # Mapped, not read: the sealed bytes are only ever decrypted, so a copy of the
            # whole file (240 MB at 100k memories) into a bytes object would be wasted.
            # A writer replaces the file by rename, so the mapped inode never changes.
            data = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except FileNotFoundError:
        raise SnapshotError("no snapshot") from None
    except ValueError:  # an empty file cannot be mapped
        raise SnapshotError("not a snapshot of this format") from None
    newline = data.find(b"\n", 0, 4096)
    fields = data[:max(newline, 0)].split(b" ")
    if newline < 0 or len(fields) != 4 or fields[0] != MAGIC or fields[1] not in READABLE_VERSIONS:
        raise SnapshotError("not a snapshot of this format")
    if fields[2].decode() != token:
        raise SnapshotError("the snapshot belongs to another state of the database")
    layout = fields[3].decode()
    try:
        counts = [int(c) for c in layout.split(",")]
    except ValueError:
        raise SnapshotError("the snapshot's header is damaged") from None
    body = memoryview(data)[newline + 1:]  # slices of a view: no copies of a large file
    segments, offset = [], 0
    for segment, count in enumerate(counts):
        blobs = []
        for _ in range(count):
            size = int.from_bytes(body[offset:offset + 8], "little")
            blob = body[offset + 8:offset + 8 + size]
            if size == 0 or blob.nbytes != size or Sealer.plaintext_size(size) < 0:
                raise SnapshotError("the snapshot is truncated")
            blobs.append(blob)
            offset += 8 + size
        # Each chunk opens in place into its slice of the segment: no join, no extra copy.
        # numpy's allocation, not bytearray's: that one zero-fills first (40 ms for 100 MB
        # here), while numpy leaves the memory untouched and backs it with huge pages.
        plain = np.empty(sum(Sealer.plaintext_size(b.nbytes) for b in blobs), dtype=np.uint8)
        view, at = memoryview(plain), 0
        for index, blob in enumerate(blobs):
            size = Sealer.plaintext_size(blob.nbytes)
            try:
                sealer.open_into(blob, _aad(token, layout, segment, index), view[at:at + size])
            except DecryptionError:
                raise SnapshotError("the snapshot failed authentication") from None
            at += size
        segments.append(view.toreadonly())  # restored arrays stay read-only, as documented above
    if offset != body.nbytes:
        raise SnapshotError("the snapshot has trailing bytes")
    return pickle.loads(segments[0], buffers=segments[1:])


def remove_snapshot(folder: Path) -> None:
    (folder / SNAPSHOT_NAME).unlink(missing_ok=True)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
