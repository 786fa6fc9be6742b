"""The memory store's in-memory records: every live memory's text and metadata, as columns.

A search needs each hit's text and metadata, and filters need kinds, times and sources,
without a trip to the encrypted database. Holding them as one Python object per memory
made opening slow: at 100k memories, unpickling 700k strings and building 100k tuples took
about 150 ms of a 0.45 s open. So the records restored from a snapshot stay in columns
(numpy arrays, and UTF-8 blobs with offsets) that unpickle as a handful of buffers, and a
record becomes a Python tuple only when something reads it (a hit, an export).

Records written after the snapshot (added, changed) live beside the columns as tuples in
a dict, and the columns keep a liveness mask; `columns()` folds both back into columns
for the next snapshot.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np


class Entry(NamedTuple):
    """One memory as the indexes need it (a tuple: cheap to make, and immutable)."""

    num: int
    id: str
    text: str
    kind: str
    tags: list[str]
    source: str | None
    created_at: str
    updated_at: str
    created_ts: float


class StrColumn:
    """Strings (or None) packed as one UTF-8 blob with offsets: two buffers to pickle, not n objects."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, missing: np.ndarray | None = None) -> None:
        self.blob, self.offsets, self.missing = blob, offsets, missing

    @classmethod
    def of(cls, values: list[str | None]) -> "StrColumn":
        encoded = [(v or "").encode("utf-8") for v in values]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        missing = np.fromiter((v is None for v in values), dtype=bool, count=len(values))
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets, missing if missing.any() else None)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str | None:
        if self.missing is not None and self.missing[i]:
            return None
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")

    def take(self, rows: np.ndarray) -> "StrColumn":
        """The strings at `rows`, in that order, as a new column."""
        view = memoryview(self.blob)
        starts, ends = self.offsets[rows].tolist(), self.offsets[rows + 1].tolist()
        lengths = np.asarray(ends, dtype=np.int64) - np.asarray(starts, dtype=np.int64)
        offsets = np.zeros(len(starts) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        blob = np.frombuffer(b"".join([view[a:b] for a, b in zip(starts, ends)]), dtype=np.uint8)
        return StrColumn(blob, offsets, None if self.missing is None else self.missing[rows])

    def starting_with(self, prefix: str) -> np.ndarray:
        """Bool mask of the strings that start with `prefix` (a missing one counts as "").

        Compares UTF-8 bytes, which gives the same answer as str.startswith, in numpy: a
        source-path filter over 1M memories costs milliseconds, not a Python loop.
        """
        wanted = np.frombuffer(prefix.encode("utf-8"), dtype=np.uint8)
        starts = self.offsets[:-1]
        if len(wanted) == 0:
            return np.ones(len(self), dtype=bool)
        mask = (self.offsets[1:] - starts) >= len(wanted)
        candidates = np.flatnonzero(mask)
        for i, byte in enumerate(wanted.tolist()):  # narrow the candidates byte by byte
            if len(candidates) == 0:
                break
            candidates = candidates[self.blob[starts[candidates] + i] == byte]
        out = np.zeros(len(self), dtype=bool)
        out[candidates] = True
        return out


def _concat(a: StrColumn, b: StrColumn) -> StrColumn:
    offsets = np.concatenate([a.offsets, a.offsets[-1] + b.offsets[1:]])
    missing = None
    if a.missing is not None or b.missing is not None:
        missing = np.concatenate([a.missing if a.missing is not None else np.zeros(len(a), dtype=bool),
                                  b.missing if b.missing is not None else np.zeros(len(b), dtype=bool)])
    return StrColumn(np.concatenate([a.blob, b.blob]), offsets, missing)


_STRINGS = ("text", "tags", "source", "created_at", "updated_at")  # StrColumn fields (tags as JSON lists)


class _Table(NamedTuple):
    """Records as columns, sorted by row number; ids also sorted, for lookups by id."""

    nums: np.ndarray          # int64, ascending
    ids: np.ndarray           # fixed-width ASCII bytes (ids are [A-Za-z0-9_-]{8,64})
    id_order: np.ndarray      # positions that sort `ids`
    kinds: np.ndarray         # int32 codes into kind_names
    kind_names: list[str]
    created_ts: np.ndarray    # float64
    strings: dict[str, StrColumn]

    @classmethod
    def of(cls, entries: list[Entry]) -> "_Table":
        entries = sorted(entries, key=lambda e: e.num)
        ids = np.array([e.id.encode("ascii") for e in entries], dtype=bytes) if entries else np.zeros(0, "S8")
        names = sorted({e.kind for e in entries})
        code = {name: i for i, name in enumerate(names)}
        values: dict[str, list[Any]] = {
            "text": [e.text for e in entries], "tags": [json.dumps(e.tags) for e in entries],
            "source": [e.source for e in entries], "created_at": [e.created_at for e in entries],
            "updated_at": [e.updated_at for e in entries]}
        return cls(nums=np.array([e.num for e in entries], dtype=np.int64), ids=ids,
                   id_order=np.argsort(ids, kind="stable"),
                   kinds=np.array([code[e.kind] for e in entries], dtype=np.int32), kind_names=names,
                   created_ts=np.array([e.created_ts for e in entries], dtype=np.float64),
                   strings={name: StrColumn.of(values[name]) for name in _STRINGS})

    def take(self, rows: np.ndarray) -> "_Table":
        ids = self.ids[rows]
        return _Table(self.nums[rows], ids, np.argsort(ids, kind="stable"), self.kinds[rows], self.kind_names,
                      self.created_ts[rows], {name: col.take(rows) for name, col in self.strings.items()})

    def entry(self, row: int) -> Entry:
        s = self.strings
        return Entry(int(self.nums[row]), self.ids[row].decode("ascii"), s["text"][row],
                     self.kind_names[self.kinds[row]], json.loads(s["tags"][row]), s["source"][row],
                     s["created_at"][row], s["updated_at"][row], float(self.created_ts[row]))

    def row_of_id(self, memory_id: str) -> int | None:
        try:
            key = np.bytes_(memory_id.encode("ascii"))
        except UnicodeEncodeError:
            return None
        i = int(np.searchsorted(self.ids, key, sorter=self.id_order))
        if i < len(self.ids) and self.ids[self.id_order[i]] == key:
            return int(self.id_order[i])
        return None


def _join(a: _Table, b: _Table) -> _Table:
    """Two tables as one (row numbers of `a` and `b` never overlap), re-sorted by number."""
    names = sorted(set(a.kind_names) | set(b.kind_names))
    code = np.array([names.index(n) for n in a.kind_names + b.kind_names] or [0], dtype=np.int32)
    kinds = np.concatenate([code[a.kinds], code[len(a.kind_names) + b.kinds]])
    ids = np.concatenate([a.ids, b.ids])
    joined = _Table(np.concatenate([a.nums, b.nums]), ids, np.argsort(ids, kind="stable"), kinds, names,
                    np.concatenate([a.created_ts, b.created_ts]),
                    {name: _concat(a.strings[name], b.strings[name]) for name in _STRINGS})
    if len(a.nums) and len(b.nums) and b.nums[0] < a.nums[-1]:
        return joined.take(np.argsort(joined.nums, kind="stable"))
    return joined


def _without_unused_kinds(table: _Table) -> _Table:
    """The table with only the kind names some record still has: a forgotten memory's kind
    (its name could itself be telling) must not outlive it in the next snapshot."""
    used = np.unique(table.kinds)
    if len(used) == len(table.kind_names):
        return table
    names = [table.kind_names[i] for i in used.tolist()]
    kinds = np.searchsorted(used, table.kinds).astype(np.int32)
    return table._replace(kinds=kinds, kind_names=names)


class Records:
    """Live memories by row number: columns restored from a snapshot plus the rows written since."""

    def __init__(self, table: _Table | None = None) -> None:
        self._table = table or _Table.of([])
        self._alive = np.ones(len(self._table.nums), dtype=bool)
        self._base_count = len(self._table.nums)
        self._extra: dict[int, Entry] = {}       # written after the table was made
        self._extra_ids: dict[str, int] = {}

    # -- snapshot --------------------------------------------------------------------------------
    @classmethod
    def from_columns(cls, columns: dict[str, Any]) -> "Records":
        """Records from a snapshot's columns (`columns()`), or from the per-field lists that
        snapshots of format 1 and 2 hold."""
        if isinstance(columns.get("text"), list):
            nums = columns["nums"].tolist()
            fields = [columns[c] for c in ("id", "text", "kind", "tags", "source", "created_at", "updated_at")]
            return cls(_Table.of([Entry(*row) for row in zip(nums, *fields, columns["created_ts"].tolist())]))
        strings = {name: StrColumn(*columns[name]) for name in _STRINGS}
        return cls(_Table(columns["nums"], columns["ids"], columns["id_order"], columns["kinds"],
                          list(columns["kind_names"]), columns["created_ts"], strings))

    def columns(self) -> dict[str, Any]:
        """Every live record as columns, for a snapshot."""
        table = self._table
        if self._base_count != len(table.nums):
            table = table.take(np.flatnonzero(self._alive))
        if self._extra:
            table = _join(table, _Table.of(list(self._extra.values())))
        table = _without_unused_kinds(table)
        out: dict[str, Any] = {"nums": table.nums, "ids": table.ids, "id_order": table.id_order,
                               "kinds": table.kinds, "kind_names": table.kind_names, "created_ts": table.created_ts}
        out.update({name: (col.blob, col.offsets, col.missing) for name, col in table.strings.items()})
        return out

    # -- reads ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._base_count + len(self._extra)

    def _row(self, num: int) -> int | None:
        nums = self._table.nums
        i = int(np.searchsorted(nums, num))
        return i if i < len(nums) and nums[i] == num and self._alive[i] else None

    def __contains__(self, num: int) -> bool:
        return num in self._extra or self._row(num) is not None

    def get(self, num: int) -> Entry | None:
        entry = self._extra.get(num)
        if entry is not None:
            return entry
        row = self._row(num)
        return None if row is None else self._table.entry(row)

    def __getitem__(self, num: int) -> Entry:
        entry = self.get(num)
        if entry is None:
            raise KeyError(num)
        return entry

    def text(self, num: int) -> str:
        return self._field(num, "text")

    def kind(self, num: int) -> str:
        return self._field(num, "kind")

    def _field(self, num: int, name: str) -> Any:
        """One field of a record, without decoding the rest (a search reads many kinds)."""
        entry = self._extra.get(num)
        if entry is not None:
            return getattr(entry, name)
        row = self._row(num)
        if row is None:
            raise KeyError(num)
        if name == "kind":
            return self._table.kind_names[self._table.kinds[row]]
        return self._table.strings[name][row]

    def num_of(self, memory_id: str) -> int | None:
        """The row number of a live memory id, or None."""
        num = self._extra_ids.get(memory_id)
        if num is not None:
            return num
        row = self._table.row_of_id(memory_id)
        return None if row is None or not self._alive[row] else int(self._table.nums[row])

    def nums(self) -> np.ndarray:
        """Every live row number, ascending."""
        return self.created()[0]

    def created(self) -> tuple[np.ndarray, np.ndarray]:
        """(live row numbers ascending, their creation times), as arrays."""
        nums = self._table.nums[self._alive]
        created = self._table.created_ts[self._alive]
        if self._extra:
            extra = sorted(self._extra)
            nums = np.concatenate([nums, np.array(extra, dtype=np.int64)])
            created = np.concatenate([created, np.array([self._extra[n].created_ts for n in extra])])
            order = np.argsort(nums, kind="stable")
            nums, created = nums[order], created[order]
        return nums, created

    def with_source_prefix(self, prefix: str) -> np.ndarray:
        """Live row numbers (ascending) whose source path starts with `prefix`."""
        base = self._table.nums[self._alive & self._table.strings["source"].starting_with(prefix)]
        extra = [n for n, e in self._extra.items() if (e.source or "").startswith(prefix)]
        return np.union1d(base, np.array(extra, dtype=np.int64)) if extra else base

    def kind_counts(self) -> dict[str, int]:
        counts = np.bincount(self._table.kinds[self._alive], minlength=len(self._table.kind_names))
        out = {name: int(c) for name, c in zip(self._table.kind_names, counts.tolist()) if c}
        for entry in self._extra.values():
            out[entry.kind] = out.get(entry.kind, 0) + 1
        return out

    def entries(self) -> Iterator[Entry]:
        """Every live record, by row number."""
        for num in self.nums().tolist():
            yield self[num]

    # -- writes --------------------------------------------------------------------------------
    def put(self, entry: Entry) -> Entry | None:
        """Add or replace the record of `entry.num`; returns the one it replaced."""
        previous = self.pop(entry.num)
        self._extra[entry.num] = entry
        self._extra_ids[entry.id] = entry.num
        return previous

    def pop(self, num: int) -> Entry | None:
        """Remove the record of `num`; returns it (None when there was none)."""
        entry = self._extra.pop(num, None)
        if entry is not None:
            if self._extra_ids.get(entry.id) == num:
                del self._extra_ids[entry.id]
            return entry
        row = self._row(num)
        if row is None:
            return None
        self._alive[row] = False
        self._base_count -= 1
        return self._table.entry(row)

    def pop_many(self, nums: Iterable[int]) -> list[Entry]:
        return [e for e in (self.pop(n) for n in nums) if e is not None]
