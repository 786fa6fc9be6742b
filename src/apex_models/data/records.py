"""One normalised record for every corpus source, and streaming JSONL files of them.

Every reader (PyPI code, Stack Exchange Q&A, tldr pages, CoNaLa, documentation) emits
the same shape, so scrubbing, deduplication, decontamination, the dataset card and the
NOTICE file are written once and work on all of them. A record is a plain dict (JSON
in, JSON out, no conversion step) with these fields always present:

``text``         the training text (valid UTF-8)
``kind``         what the text is: ``code``, ``qa``, ``command``, ``doc``, ``pair``
``source``       the reader: ``pypi``, ``stackexchange``, ``tldr``, ``conala``, ``docs``
``url``          where a person can read the original (may be empty)
``path``         the file or item inside the source (may be empty)
``license``      SPDX expression of the text
``attribution``  one human-readable line that credits the authors, as the licence asks
``sha256``       sha256 of ``text`` encoded as UTF-8
``language``     natural or programming language of the text (``en``, ``python``, ``shell``)

Readers add their own fields beside these (``title``, ``tags``, ``heading_path``...).
:mod:`apex_models.data.pypi` already writes exactly these fields plus ``package`` and
``version``, so ``code.jsonl`` is a file of records too.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, TypedDict

from apex_models.hashing import sha256_bytes

log = logging.getLogger(__name__)

RECORD_FIELDS = ("text", "kind", "source", "url", "path", "license", "attribution", "sha256", "language")


class Record(TypedDict, total=False):
    """The fields every record has (readers may add more; see the module docstring)."""

    text: str
    kind: str
    source: str
    url: str
    path: str
    license: str
    attribution: str
    sha256: str
    language: str


def text_sha256(text: str) -> str:
    return sha256_bytes(text.encode("utf-8"))


def make_record(text: str, *, kind: str, source: str, license: str, attribution: str,
                url: str = "", path: str = "", language: str = "en", **extra: Any) -> dict[str, Any]:
    """A record with the common fields first and its sha256 computed from `text`.

    Keyword-only so a reader cannot swap licence and attribution by position.
    """
    record: dict[str, Any] = {
        "text": text, "kind": kind, "source": source, "url": url, "path": path,
        "license": license, "attribution": attribution, "sha256": text_sha256(text),
        "language": language,
    }
    record.update(extra)
    return record


def refresh_sha256(record: dict[str, Any]) -> dict[str, Any]:
    """Recompute ``sha256`` after ``text`` changed (scrubbing does this)."""
    record["sha256"] = text_sha256(record.get("text", ""))
    return record


def write_records(records: Iterable[dict], path: Path) -> int:
    """Write records as JSONL, one at a time; returns how many were written.

    Streaming (an iterator of millions of records never sits in memory) and atomic: the
    file is written under a temporary name and renamed, so a crash never leaves a
    half-written corpus behind the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                count += 1
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


def read_records(path: Path, skipped: Counter | None = None) -> Iterator[dict]:
    """Stream records from a JSONL file; a malformed line is skipped and counted, not raised."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                if skipped is not None:
                    skipped["malformed_jsonl_line"] += 1
                log.warning("%s:%d: malformed JSON line skipped (%s)", path, lineno, exc)


@dataclass
class Skips:
    """Inputs (files, archive members, rows) left out, with their reasons.

    Readers take one and add to it instead of raising, so one bad file never stops a
    stage; the stage report shows ``counts`` by reason and the first ``max_examples``
    (input, reason, detail) entries so a person can look at them.
    """

    counts: Counter = field(default_factory=Counter)
    examples: list[dict[str, str]] = field(default_factory=list)
    max_examples: int = 50

    def add(self, reason: str, where: str | Path = "", detail: str = "", example: bool = True) -> None:
        """Count one skip; `example=False` for routine filters (no entry in ``examples``)."""
        self.counts[reason] += 1
        if example and len(self.examples) < self.max_examples:
            self.examples.append({"input": str(where), "reason": reason, "detail": str(detail)[:300]})
        (log.info if example else log.debug)("skipped %s: %s %s", where, reason, detail)

    def as_dict(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "examples": list(self.examples)}
