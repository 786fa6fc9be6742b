"""The store's columnar records behave like a plain dict of records, through writes and
snapshot round trips, and their numpy filters give what Python's own string tests give."""

from __future__ import annotations

import pickle
import random

import numpy as np

from apex_models.runtime.records import Entry, Records, StrColumn

SOURCES = [None, "", "src/a.py", "src/ab.py", "src/a/b.py", "docs/é/ü.md", "docs/é", "tests/x.py", "s"]
KINDS = ["note", "code", "error", "decision", "procédure"]


def _entry(rng: random.Random, num: int, memory_id: str) -> Entry:
    return Entry(num, memory_id, f"text {num} {rng.random():.6f} ünïcode", rng.choice(KINDS),
                 rng.sample(["a", "b", "c,d", "ta\"g"], rng.randint(0, 3)), rng.choice(SOURCES),
                 f"2026-01-{rng.randint(1, 28):02d}T00:00:00+00:00", "2026-02-01T00:00:00+00:00",
                 rng.uniform(0, 1e9))


def _round_trip(records: Records) -> Records:
    """As a snapshot carries them: columns, pickled with out-of-band buffers, restored."""
    buffers: list[pickle.PickleBuffer] = []
    payload = pickle.dumps(records.columns(), protocol=5, buffer_callback=buffers.append)
    return Records.from_columns(pickle.loads(payload, buffers=[b.raw() for b in buffers]))


def _check(records: Records, model: dict[int, Entry]) -> None:
    nums = sorted(model)
    assert len(records) == len(model)
    assert records.nums().tolist() == nums
    assert list(records.entries()) == [model[n] for n in nums]
    for num, entry in model.items():
        assert num in records and records[num] == entry
        assert records.num_of(entry.id) == num
        assert records.text(num) == entry.text and records.kind(num) == entry.kind
    created_nums, created = records.created()
    assert created_nums.tolist() == nums and created.tolist() == [model[n].created_ts for n in nums]
    counts: dict[str, int] = {}
    for entry in model.values():
        counts[entry.kind] = counts.get(entry.kind, 0) + 1
    assert records.kind_counts() == counts
    for prefix in ["", "src/a", "src/a.py", "docs/é", "docs/é/", "s", "zzz", "src/a.py/longer"]:
        expected = [n for n in nums if (model[n].source or "").startswith(prefix)]
        assert records.with_source_prefix(prefix).tolist() == expected, prefix


def test_records_match_a_dict_through_writes_and_round_trips() -> None:
    rng = random.Random(7)
    records, model = Records(), {}
    next_num, ids = 1, []
    for step in range(600):
        op = rng.random()
        if op < 0.5 or not model:                       # add
            memory_id = f"id-{next_num:06d}" if rng.random() < 0.8 else f"{next_num:x}" * 8
            entry = _entry(rng, next_num, memory_id[:64])
            assert records.put(entry) is None
            model[next_num] = entry
            ids.append(entry.id)
            next_num += 1
        elif op < 0.7:                                   # update in place (same row, same id)
            num = rng.choice(list(model))
            entry = _entry(rng, num, model[num].id)
            assert records.put(entry) == model[num]
            model[num] = entry
        elif op < 0.85:                                  # delete
            num = rng.choice(list(model))
            assert records.pop(num) == model.pop(num)
            assert records.pop(num) is None and records.num_of(ids[num - 1]) is None
        else:                                            # the id of a deleted memory comes back
            gone = [i for i in ids if records.num_of(i) is None]
            if gone:
                entry = _entry(rng, next_num, rng.choice(gone))
                records.put(entry)
                model[next_num] = entry
                ids.append(entry.id)
                next_num += 1
        if step % 97 == 0:
            _check(records, model)
            records = _round_trip(records)
            _check(records, model)
    _check(records, model)
    assert records.num_of("not-an-id-at-all") is None and records.num_of("ïd-not-ascii") is None
    assert records.get(10**9) is None


def test_restored_columns_stay_columns() -> None:
    """What makes an open fast: a restored table holds a few arrays, not a tuple per memory."""
    rng = random.Random(3)
    records = Records()
    for num in range(1, 2001):
        records.put(_entry(rng, num, f"memory-{num:05d}"))
    columns = records.columns()
    assert all(isinstance(v, (np.ndarray, list, tuple)) for v in columns.values())
    assert columns["text"][0].dtype == np.uint8 and columns["ids"].dtype.kind == "S"
    restored = Records.from_columns(columns)
    assert not restored._extra and len(restored) == 2000
    restored.pop(5)
    restored.put(_entry(rng, 7, "memory-00007"))         # a changed row moves out of the columns
    assert len(restored._extra) == 1 and restored.num_of("memory-00005") is None
    assert restored.num_of("memory-00007") == 7 and len(restored) == 1999


def test_str_column_take_and_prefix() -> None:
    values = ["alpha", None, "", "älpha/β", "al", "alphabet"]
    column = StrColumn.of(values)
    assert [column[i] for i in range(len(values))] == values
    taken = column.take(np.array([5, 1, 3]))
    assert [taken[i] for i in range(3)] == ["alphabet", None, "älpha/β"]
    assert column.starting_with("alpha").tolist() == [True, False, False, False, False, True]
    assert column.starting_with("ä").tolist() == [False, False, False, True, False, False]
    assert column.starting_with("").all()
