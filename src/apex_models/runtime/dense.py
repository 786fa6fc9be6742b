"""The in-memory dense index of the memory store: FAISS exact (flat) or HNSW, inner product.

FAISS ids are positions (0, 1, 2...) mapped to store row numbers here, because HNSW
cannot remove vectors: a delete or an update marks the old position dead, searches skip
dead positions (over-fetching by their number), and `compact` rebuilds from the live
vectors once dead ones pile up. One code path serves both index kinds.
"""

from __future__ import annotations

import faiss
import numpy as np


def _buffer_reader(serialized) -> "faiss.PyCallbackIOReader":
    """A FAISS reader over a serialised index held in memory (a numpy uint8 array or bytes).

    `faiss.deserialize_index` first copies the whole buffer into a zero-filled
    `UInt8Vector` and then parses that: at 100k memories two extra passes over 240 MB,
    about 0.13 s of a store's open. Here FAISS pulls the bytes straight from the buffer,
    16 MiB at a time, so each byte is copied once, into the index it belongs to.
    """
    view = memoryview(serialized).cast("B")
    pos = 0

    def read(size: int) -> bytes:
        nonlocal pos
        start, pos = pos, min(pos + size, len(view))
        return bytes(view[start:pos])

    return faiss.PyCallbackIOReader(read, 1 << 24)


# HNSW's vector storage. fp16 halves the memory, the snapshot and its load against fp32, and
# searches faster (less memory traffic per distance) at the same recall: 100k real-text
# vectors, M=32, ef 128: recall@10 0.994 vs 0.995, p50 0.35 vs 0.57 ms, 104 vs 181 MB
# serialised. The flat (exact) index keeps fp32.
HNSW_STORAGE = ("fp16", "fp32")
# efSearch when none is configured: recall@10 against exact on real-text vectors is 0.976
# at 128 for 100k memories, but at 1M 0.94 at 256 and 0.973 at 512 for +0.4 ms a search
# (its p50 0.56 -> 0.97 ms; hybrid p99 stays under 5 ms; eval/results/memory.json), so
# the beam widens from AUTO_EF_LARGE_FROM memories.
AUTO_EF, AUTO_EF_LARGE, AUTO_EF_LARGE_FROM = 128, 512, 500_000
# What the two ways of searching among a filter's rows cost (see `search_among`), measured
# on 2 cores with fp16 HNSW storage at 100k and 1M real-text vectors: a slot of the beam of
# a restricted HNSW walk costs about 1.9 us at both sizes; an exact scan reads the whole
# selector bitmap (about 1.4 us per 1,000 vectors held) and decodes every selected vector,
# 0.04 us a row at 100k but 0.2 us at 1M, where the selected rows are scattered over 768 MB
# (cache and TLB misses). The first model counted one distance per row at any size and kept
# 40k-65k-row filters at 1M on the exact scan: 10-15 ms instead of 1.5-5.
HNSW_SLOT_US = 1.9
EXACT_BITMAP_US_PER_HELD = 0.0014
EXACT_ROW_US = ((100_000, 0.04), (1_000_000, 0.2))  # (vectors held, us per selected row)
# A walk restricted to a filter's rows gets a beam of this many times fetch / share (at
# least the plain search's). At 1M memories, fetch 50, its recall@10 against the scan at
# factors 1 / 1.5 / 2 was 0.971 / 0.980 / 0.990 among 65k rows (2.1 ms p99 at 1.5) and
# 0.986 / 0.993 / 0.995 among 40k (3.6 ms p99) (eval/bench_filters.py, results/filters.json).
FILTER_BEAM_FACTOR = 1.5
# Selectors kept for reuse (a store passes the same cached row array for a repeated filter;
# building one over 900k rows takes 3.4 ms at 1M); dropped on every write.
SELECTOR_CACHE_SIZE = 8


def exact_scan_us(rows: int, held: int) -> float:
    """Estimated cost of the bitmap-selected exact scan of `rows` rows among `held` vectors;
    the per-row cost is interpolated in log(held) between EXACT_ROW_US's points, flat beyond."""
    (n0, c0), (n1, c1) = EXACT_ROW_US
    t = min(1.0, max(0.0, (np.log(max(held, 1)) - np.log(n0)) / (np.log(n1) - np.log(n0))))
    return EXACT_BITMAP_US_PER_HELD * held + rows * (c0 + t * (c1 - c0))


class DenseIndex:
    """Vectors by store row number; `kind` is "flat" (exact) or "hnsw" (approximate)."""

    def __init__(self, dimension: int, kind: str = "flat", hnsw_m: int = 32, ef_construction: int = 80,
                 ef_search: int | None = None, hnsw_storage: str = "fp16") -> None:
        if kind not in ("flat", "hnsw"):
            raise ValueError(f"dense index kind must be flat or hnsw, not {kind!r}")
        if hnsw_storage not in HNSW_STORAGE:
            raise ValueError(f"hnsw storage must be one of {sorted(HNSW_STORAGE)}, not {hnsw_storage!r}")
        self.hnsw_storage = hnsw_storage
        self.dimension = dimension
        self.kind = kind
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self._rowid_at: list[int] = []  # position -> row number, -1 when dead
        self._pos = np.full(0, -1, dtype=np.int64)  # row number -> position, -1 when none (grows by doubling)
        self._live = 0
        self._selectors: dict[int, tuple] = {}  # id(rows) -> (rows, selector, count, bitmap)
        self._index = self._new_index()

    def _new_index(self) -> faiss.Index:
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dimension)
        if self.hnsw_storage == "fp32":
            index = faiss.IndexHNSWFlat(self.dimension, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexHNSWSQ(self.dimension, faiss.ScalarQuantizer.QT_fp16, self.hnsw_m,
                                      faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        index.hnsw.efSearch = self.base_ef()
        return index

    def base_ef(self) -> int:
        """HNSW's beam for a plain top-k search: `ef_search`, or by size when it is None."""
        if self.ef_search is not None:
            return self.ef_search
        return AUTO_EF_LARGE if self._live >= AUTO_EF_LARGE_FROM else AUTO_EF

    # -- size --------------------------------------------------------------------------------
    @property
    def live(self) -> int:
        return self._live

    @property
    def ntotal(self) -> int:
        """Positions in FAISS, dead ones included (equals `live` right after a rebuild)."""
        return int(self._index.ntotal)

    @property
    def dead(self) -> int:
        return self.ntotal - self.live

    def __contains__(self, rowid: int) -> bool:
        return self._position(rowid) >= 0

    def _position(self, rowid: int) -> int:
        return int(self._pos[rowid]) if 0 <= rowid < len(self._pos) else -1

    def _positions(self, rowids: np.ndarray) -> np.ndarray:
        """Positions of these rows, -1 for a row not held."""
        out = np.full(len(rowids), -1, dtype=np.int64)
        known = (rowids >= 0) & (rowids < len(self._pos))
        out[known] = self._pos[rowids[known]]
        return out

    # -- writes ------------------------------------------------------------------------------
    def add(self, rowids: list[int], vectors: np.ndarray) -> None:
        """Add (or replace) vectors; a replaced row's old position becomes dead."""
        if not rowids:
            return
        self.remove([r for r in rowids if r in self])
        start = self.ntotal
        self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._rowid_at.extend(rowids)
        self._place(np.asarray(rowids, dtype=np.int64), np.arange(start, start + len(rowids), dtype=np.int64))
        self._maybe_compact()

    def _place(self, rowids: np.ndarray, positions: np.ndarray) -> None:
        """Record new rows' positions, growing the map (doubling) to the largest row."""
        if not len(rowids):
            return
        self._selectors.clear()
        need = int(rowids.max()) + 1
        if need > len(self._pos):
            grown = np.full(max(need, 2 * len(self._pos)), -1, dtype=np.int64)
            grown[:len(self._pos)] = self._pos
            self._pos = grown
        self._pos[rowids] = positions
        self._live += len(rowids)

    def remove(self, rowids: list[int]) -> None:
        self._selectors.clear()
        for rowid in rowids:
            pos = self._position(rowid)
            if pos >= 0:
                self._rowid_at[pos] = -1
                self._pos[rowid] = -1
                self._live -= 1
        self._maybe_compact()

    def scrub(self, rowid: int) -> None:
        """Zero a row's vector inside FAISS, then drop it (forget: no copy left in this process)."""
        pos = self._position(rowid)
        if pos < 0:
            return
        self._stored_rows()[pos] = 0
        self.remove([rowid])

    def zero_dead(self) -> None:
        """Zero the vectors at dead positions (never returned by a search) before they are written out."""
        dead = [pos for pos, rowid in enumerate(self._rowid_at) if rowid < 0]
        if not dead:
            return
        self._stored_rows()[dead] = 0

    def _stored_rows(self) -> np.ndarray:
        """FAISS's own vector storage, writable in place, as one row of raw bytes per position
        (fp32 floats or fp16 codes: all-zero bytes are a zero vector in both)."""
        storage = self._index if self.kind == "flat" else faiss.downcast_index(self._index.storage)
        if isinstance(storage, faiss.IndexScalarQuantizer):
            raw = faiss.rev_swig_ptr(storage.codes.data(), storage.codes.size())
        else:
            raw = faiss.rev_swig_ptr(storage.get_xb(), self.ntotal * self.dimension).view(np.uint8)
        return raw.reshape(self.ntotal, -1)

    def _maybe_compact(self) -> None:
        if self.dead > 256 and self.dead > self.ntotal // 5:
            self.compact()

    def compact(self, kind: str | None = None) -> None:
        """Rebuild from the live vectors (optionally switching kind): no dead positions left."""
        rowids = [r for r in self._rowid_at if r >= 0]  # in position order
        vectors = self.vectors(rowids)
        self.kind = kind or self.kind
        self._index = self._new_index()
        self._rowid_at, self._pos, self._live = [], np.full(0, -1, dtype=np.int64), 0
        self._selectors.clear()
        if rowids:
            self.add(rowids, vectors)

    # -- snapshot ----------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to rebuild this index without re-inserting a vector (see snapshot.py)."""
        return {"dimension": self.dimension, "kind": self.kind, "hnsw_m": self.hnsw_m,
                "ef_construction": self.ef_construction, "hnsw_storage": self.hnsw_storage,
                "faiss": faiss.serialize_index(self._index),
                "rowid_at": np.asarray(self._rowid_at, dtype=np.int64)}

    @classmethod
    def from_state(cls, state: dict, ef_search: int | None) -> "DenseIndex":
        """The index `state()` described; `ef_search` comes from the caller's config, not the file."""
        index = cls(state["dimension"], state["kind"], state["hnsw_m"], state["ef_construction"], ef_search,
                    state.get("hnsw_storage", "fp32"))  # snapshots before fp16 storage hold fp32
        index._index = faiss.read_index(_buffer_reader(state["faiss"]))
        if state["kind"] == "hnsw":
            index._index.hnsw.efSearch = index.base_ef()
        index._rowid_at = state["rowid_at"].tolist()
        live = np.flatnonzero(state["rowid_at"] >= 0)
        index._place(state["rowid_at"][live], live)
        if index._index.ntotal != len(index._rowid_at):
            raise ValueError("dense index state is inconsistent (FAISS size differs from its row map)")
        return index

    # -- reads -------------------------------------------------------------------------------
    def vectors(self, rowids: list[int]) -> np.ndarray:
        """The stored vectors of these rows, in order (FAISS keeps them; no second copy)."""
        if not rowids:
            return np.zeros((0, self.dimension), dtype=np.float32)
        positions = self._positions(np.asarray(rowids, dtype=np.int64))
        if (positions < 0).any():
            raise KeyError(f"rows not in the dense index: {np.asarray(rowids)[positions < 0][:5].tolist()}")
        return self._index.reconstruct_batch(positions)

    def search(self, query: np.ndarray, fetch: int) -> list[tuple[int, float]]:
        """Up to `fetch` live rows, best first; asks FAISS for `fetch + dead` to cover skipped ones."""
        if self.live == 0 or fetch <= 0:
            return []
        want = min(self.ntotal, fetch + self.dead)
        if self.kind == "hnsw":
            self._index.hnsw.efSearch = max(self.base_ef(), want)
        scores, positions = self._index.search(np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1), want)
        out = []
        for pos, score in zip(positions[0], scores[0]):
            if pos >= 0 and (rowid := self._rowid_at[pos]) >= 0:
                out.append((rowid, float(score)))
        return out[:fetch]

    def search_among(self, query: np.ndarray, rowids: np.ndarray, fetch: int) -> list[tuple[int, float]]:
        """The best `fetch` of these rows (a filter's), by whichever path costs less.

        An HNSW walk restricted to the rows (FAISS skips the others in its results, not in
        its walk) gets a beam of FILTER_BEAM_FACTOR * fetch / share; the exact scan reads the
        bitmap and every selected vector. Both are priced with the measured costs above
        (HNSW_SLOT_US, exact_scan_us): at 1M memories and fetch 50 the scan wins below
        about 23k rows. A walk that returns too few falls back to the scan.
        """
        rowids = np.asarray(rowids, dtype=np.int64)
        selector, count, _bits = self._selector(rowids)
        if count == 0 or fetch <= 0:
            return []
        want = min(fetch, count)
        beam = self.filter_beam(count, want)
        if beam is not None:
            scores, found = self._index.search(np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1), want,
                                               params=faiss.SearchParametersHNSW(sel=selector, efSearch=beam))
            hits = [(self._rowid_at[p], float(s)) for p, s in zip(found[0], scores[0]) if p >= 0]
            if len(hits) >= want:
                return hits
        return self._flat_search(query, want, selector)

    def filter_beam(self, rows: int, want: int) -> int | None:
        """The restricted walk's beam for `want` hits among `rows` rows, or None when the
        exact scan is priced lower (or the index is flat)."""
        if self.kind != "hnsw" or rows <= 0:
            return None
        beam = max(self.base_ef(), min(rows, int(FILTER_BEAM_FACTOR * want * self.ntotal / rows)))
        return beam if HNSW_SLOT_US * beam < exact_scan_us(rows, self.ntotal) else None

    def _selector(self, rowids: np.ndarray) -> tuple[faiss.IDSelector, int, np.ndarray]:
        """(FAISS selector of these rows' live positions, how many, the bitmap it reads: keep it
        alive while the selector is used). The same array object (a store's cached filter)
        gets the same selector until the next write."""
        cached = self._selectors.get(id(rowids))
        if cached is not None and cached[0] is rowids:
            return cached[1:]
        positions = self._positions(rowids)
        positions = positions[positions >= 0]
        bitmap = np.zeros(self.ntotal, dtype=bool)
        bitmap[positions] = True
        bits = np.packbits(bitmap, bitorder="little")
        made = (faiss.IDSelectorBitmap(self.ntotal, faiss.swig_ptr(bits)), len(positions), bits)
        if not rowids.flags.writeable:  # only arrays nobody can change in place are reused
            if len(self._selectors) >= SELECTOR_CACHE_SIZE:
                self._selectors.pop(next(iter(self._selectors)))
            self._selectors[id(rowids)] = (rowids, *made)
        return made

    def _flat_search(self, query: np.ndarray, k: int, selector: faiss.IDSelector) -> list[tuple[int, float]]:
        """Exact inner product over the selected positions, in FAISS's flat storage and its own
        single-query loop (a numpy product here would wake BLAS's thread pool, which costs
        milliseconds on a busy machine)."""
        flat = self._index if self.kind == "flat" else faiss.downcast_index(self._index.storage)
        scores, found = flat.search(np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1), k,
                                    params=faiss.SearchParameters(sel=selector))
        return [(self._rowid_at[p], float(s)) for p, s in zip(found[0], scores[0]) if p >= 0]
