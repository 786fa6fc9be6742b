"""The per-record chain of the ingest stages, one function both engines run.

A reader yields normalised records (:func:`apex_models.data.records.make_record`); each
then goes through :func:`transform_record`:

1. **licence filter**: the record's SPDX expression must be allowed by the configured
   allowlist (``CC-BY-*`` style prefixes allowed); unknown means excluded;
2. **scrub**: secrets and personal data become typed placeholders, so nothing
   downstream, not even a log line, holds them;
3. **decontaminate**: a record overlapping a benchmark is dropped (before dedup, so a
   benchmark copy is reported as contamination rather than as a duplicate);
4. **dedup keys**: the normalised-text digest and MinHash signature, the costly half of
   deduplication.

Every step is a pure function of the record and the settings in :class:`Transforms`, so
the same code runs in-process (engine ``local``) or on Ray Data workers (engine
``ray``, :mod:`apex_models.data.ray_engine`). Only the last step of dedup, looking the
keys up among everything kept so far, needs a global view; it stays in the driver,
in stream order, so both engines keep exactly the same records.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from apex_models.data.decontam import Decontaminator
from apex_models.data.dedup import Deduplicator, DedupStats, dedup_keys
from apex_models.data.licenses import is_allowed
from apex_models.data.scrub import scrub_record

_FENCED = re.compile(r"```[^\n]*\n([\s\S]*?)\n```")
MAX_CODE_BLOCKS_CHECKED = 20


def _code_blocks(text: str) -> list[str]:
    return _FENCED.findall(text or "")[:MAX_CODE_BLOCKS_CHECKED]


def contamination(record: dict, deco: Decontaminator) -> str | None:
    """Why a record overlaps a benchmark, or None.

    The record's query-like field (question title, tldr description, CoNaLa intent,
    section heading) and code field (the whole text of a ``code`` record) are checked as a pair; then every fenced code block
    of the text is checked as code, since a benchmark snippet can sit inside an answer.
    """
    heading = " ".join(record.get("heading_path") or [])[-300:]
    query = record.get("title") or record.get("query") or heading
    code = record.get("code") or (record.get("text") if record.get("kind") == "code" else "")
    reason = deco.is_contaminated(query or "", code or "")
    if reason:
        return reason
    for block in _code_blocks(record.get("text", "")):
        reason = deco.is_contaminated("", block)
        if reason:
            return f"{reason}-in-text"
    return None


@dataclass
class Transforms:
    """The settings and state of the chain; picklable, so Ray ships one copy per worker.

    `license_allowlist` None keeps every licence (the readers already chose it);
    `dedup` None turns the dedup keys off.
    """

    deco: Decontaminator
    scrub: bool = True
    license_allowlist: list[str] | None = None
    dedup_num_perm: int | None = 128
    dedup_seed: int = 1


@dataclass
class Outcome:
    """What the chain did to one record: kept (`record` set) or `dropped` with a reason."""

    record: dict[str, Any] | None
    dropped: str | None = None          # "license" or a decontamination reason
    license: str = ""                   # the record's licence expression (for the report)
    scrub: Counter = field(default_factory=Counter)
    digest: bytes = b""
    signature: Any = None


def transform_record(record: dict[str, Any], t: Transforms) -> Outcome:
    """Licence filter, scrub, decontaminate and dedup keys for one record (see the module doc)."""
    license = record.get("license") or ""
    if t.license_allowlist is not None and not is_allowed(license, t.license_allowlist):
        return Outcome(None, dropped="license", license=license)
    counts: Counter = Counter()
    if t.scrub:
        scrub_record(record, counts)
    reason = contamination(record, t.deco)
    if reason:
        return Outcome(None, dropped=reason, license=license, scrub=counts)
    digest, signature = b"", None
    if t.dedup_num_perm is not None:
        digest, signature = dedup_keys(record.get("text") or "", t.dedup_num_perm, t.dedup_seed)
    return Outcome(record, license=license, scrub=counts, digest=digest, signature=signature)


def local_outcomes(records: Iterable[dict], t: Transforms) -> Iterator[Outcome]:
    """Engine ``local``: the chain in this process, one record at a time (streaming)."""
    for record in records:
        yield transform_record(record, t)


def new_stats() -> dict[str, Any]:
    """The per-source counters :func:`keep_outcomes` fills."""
    return {"read": 0, "scrub": Counter(), "decontaminated": Counter(), "license_excluded": Counter(),
            "licenses": Counter(), "_dedup": DedupStats()}


def keep_outcomes(outcomes: Iterable[Outcome], dedup: Deduplicator | None, stats: dict[str, Any]) -> Iterator[dict]:
    """Count every outcome into `stats` and yield the records that survive dedup, in order.

    The driver's half of the chain, identical for both engines: the dedup index sees the
    records in stream order, so the first occurrence is kept whichever engine ran.
    """
    for o in outcomes:
        stats["read"] += 1
        stats["scrub"].update(o.scrub)
        if o.dropped == "license":
            stats["license_excluded"][o.license or "unknown"] += 1
            continue
        if o.dropped:
            stats["decontaminated"][o.dropped] += 1
            continue
        if dedup is not None and not dedup.count(dedup.check_keys(o.digest, o.signature), stats["_dedup"]):
            continue
        stats["licenses"][o.license] += 1
        yield o.record
