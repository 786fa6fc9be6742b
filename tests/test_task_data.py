"""Task datasets on disk: rows round-trip in order, hashes name content, old layouts fail clearly."""

from __future__ import annotations

import pytest

from apex_models.data.sensitivity_dataset import from_arrow_row, read_examples, to_arrow_row
from apex_models.data.task_data import load_dataset_dict, read_split, rows_sha256, save_splits, split_files, write_split

ROWS = [{"query": "read a file", "code": "open(p).read()", "license": "MIT", "n": 3, "tags": ["io"]},
        {"query": "sort a list", "code": "sorted(x)", "license": None, "n": 0, "tags": []},
        {"query": "ünïcode ✓", "code": "s.encode('utf-8')", "license": "BSD-3-Clause", "n": -1, "tags": ["a", "b"]}]


def test_splits_round_trip_in_order_and_open_as_a_datasetdict(tmp_path) -> None:
    hashes = save_splits(tmp_path / "ds", {"train": ROWS, "test": ROWS[:1]})
    assert read_split(tmp_path / "ds" / "train") == ROWS
    assert read_split(tmp_path / "ds" / "test") == ROWS[:1]
    ds = load_dataset_dict(tmp_path / "ds", "datasets")
    assert sorted(ds) == ["test", "train"] and ds["train"].num_rows == 3
    assert hashes == {"train": rows_sha256(ROWS), "test": rows_sha256(ROWS[:1])}
    # Written again (a re-run of the stage), the content hash and the rows are unchanged.
    assert save_splits(tmp_path / "ds", {"train": ROWS, "test": ROWS[:1]}) == hashes
    assert read_split(tmp_path / "ds" / "train") == ROWS
    assert rows_sha256(ROWS[::-1]) != hashes["train"]  # order is part of the content


def test_equal_rows_give_byte_identical_folders(tmp_path) -> None:
    """DVC hashes the folder: a stage re-run that writes the same rows must not look like new
    data, or every model downstream would retrain."""
    from apex_models.hashing import sha256_tree

    save_splits(tmp_path / "a", {"train": ROWS, "dev": ROWS[:2]})
    save_splits(tmp_path / "b", {"train": ROWS, "dev": ROWS[:2]})
    assert sha256_tree(tmp_path / "a") == sha256_tree(tmp_path / "b")
    save_splits(tmp_path / "b", {"train": ROWS[:2], "dev": ROWS[:2]})
    assert sha256_tree(tmp_path / "a") != sha256_tree(tmp_path / "b")


def test_resume_fingerprints_hash_the_arrow_data(tmp_path) -> None:
    a = write_split(tmp_path / "a", ROWS)
    b = write_split(tmp_path / "b", ROWS[:2])
    assert [p.suffix for p in split_files(a)] == [".arrow"]
    assert split_files(a)[0].read_bytes() != split_files(b)[0].read_bytes()
    with pytest.raises(FileNotFoundError, match="no Arrow data"):
        split_files(tmp_path)


def test_missing_or_old_jsonl_datasets_say_which_stage_to_run(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="run the DVC stage datasets"):
        load_dataset_dict(tmp_path / "embedder", "datasets")
    (tmp_path / "embedder").mkdir()
    (tmp_path / "embedder" / "train.jsonl").write_text('{"query": "q", "code": "c"}\n')
    with pytest.raises(FileNotFoundError, match="older version; re-run its stage"):
        read_split(tmp_path / "embedder" / "train")


def test_sensitivity_spans_survive_arrow(tmp_path) -> None:
    """Spans are mixed lists ([start, end, type]); Arrow holds them as structs and the
    recipe gets the lists back, empty ones included."""
    rows = [{"text": "key=AKIA0123", "spans": [[4, 12, "SECRET"]], "lookalikes": [], "label": "secret", "source": "a"},
            {"text": "id=3f2a", "spans": [], "lookalikes": [[3, 7]], "label": "public", "source": "b"},
            {"text": "plain", "spans": [], "lookalikes": [], "label": "public", "source": "c"}]
    assert [from_arrow_row(to_arrow_row(r)) for r in rows] == rows
    save_splits(tmp_path, {"test": [to_arrow_row(r) for r in rows]})
    assert read_examples(tmp_path / "test") == rows
