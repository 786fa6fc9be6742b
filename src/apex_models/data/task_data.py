"""Task datasets on disk: Hugging Face ``datasets`` in Arrow, one folder per dataset.

Every task dataset (embedder pairs, ranker examples, intent weak labels, sensitivity
spans, planner plans) is a ``DatasetDict`` saved with ``save_to_disk``: a folder with
``dataset_dict.json`` and one sub-folder per split, beside the stage's ``report.json``,
``README.md`` (the card) and, where needed, ``NOTICE``. Anyone can open one with
``datasets.load_from_disk(folder)``; a recipe reads one split by its folder
(``<dataset>/train``), the way it once read ``train.jsonl``.

Rows go in and come out as plain dicts in their original order, so a recipe sees the
same examples, in the same order, whichever machine wrote them. Arrow needs one type
per column: rows of one split must share their keys and value types (a stage that
holds mixed lists, such as sensitivity spans, converts them at its own boundary).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

from apex_models.hashing import sha256_bytes


def save_splits(out_dir: Path, splits: Mapping[str, list[dict[str, Any]]]) -> dict[str, str]:
    """Write `splits` as one ``DatasetDict`` under `out_dir`; returns each split's content hash.

    Earlier split folders and a ``dataset_dict.json`` in `out_dir` are replaced; other files
    there (the card, the report) are left for the stage to rewrite. The hash is over the
    rows as canonical JSON, so it names the content, not Arrow's file layout.
    """
    from datasets import Dataset, DatasetDict

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in splits:
        shutil.rmtree(out_dir / name, ignore_errors=True)
    DatasetDict({name: Dataset.from_list(list(rows)) for name, rows in splits.items()}).save_to_disk(str(out_dir))
    return {name: rows_sha256(rows) for name, rows in splits.items()}


def write_split(path: Path, rows: Iterable[dict[str, Any]]) -> Path:
    """One split on its own at `path` (a ``Dataset`` folder): what tests and small tools write."""
    from datasets import Dataset

    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    Dataset.from_list(list(rows)).save_to_disk(str(path))
    return path


def read_split(path: Path) -> list[dict[str, Any]]:
    """The rows of one split folder (``<dataset>/<split>``), in order, as dicts.

    Held in memory: a dataset mapped from its folder would write cache files there, which
    would change the DVC output of the stage that made it.
    """
    from datasets import load_from_disk

    path = Path(path)
    if not (path / "dataset_info.json").is_file() and not (path / "state.json").is_file():
        hint = f" (found {path.name}.jsonl: a dataset from an older version; re-run its stage)" \
            if path.with_name(path.name + ".jsonl").is_file() else ""
        raise FileNotFoundError(f"{path} is not a saved dataset split: run the stage that builds "
                                f"{path.parent.name or path}{hint}")
    return load_from_disk(str(path), keep_in_memory=True).to_list()


def split_files(path: Path) -> list[Path]:
    """The Arrow data files of one split folder, sorted: what a resume fingerprint hashes
    (the folder's JSON metadata holds nothing the rows do not)."""
    files = sorted(Path(path).glob("*.arrow"))
    if not files:
        raise FileNotFoundError(f"{path} holds no Arrow data: not a saved dataset split")
    return files


def load_dataset_dict(path: Path, stage: str):
    """The saved ``DatasetDict`` at `path`, or a clear error naming `stage`. In memory, as in
    :func:`read_split`: a shuffle or filter would otherwise write cache files into the folder."""
    from datasets import load_from_disk

    if not (Path(path) / "dataset_dict.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved dataset: run the DVC stage {stage} first")
    return load_from_disk(str(path), keep_in_memory=True)


def rows_sha256(rows: Iterable[dict[str, Any]]) -> str:
    """sha256 of rows as sorted-key JSON lines: equal rows give equal hashes on any machine."""
    return sha256_bytes("".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode())
