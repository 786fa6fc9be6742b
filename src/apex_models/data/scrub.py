"""Replace secrets and personal data with typed placeholders before training text is written.

Typed placeholders (``<SECRET:aws_access_key>``, ``<PII:email>``) rather than deletion:
the sentence keeps its shape, a model learns that a key goes there without learning
the key, and the counts by kind go into the dataset report.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

from apex_models.sensitivity.detectors import Finding, find_sensitive
from apex_models.data.records import refresh_sha256


def placeholder(finding: Finding) -> str:
    return f"<{finding.category}:{finding.kind}>"


def scrub_text(text: str) -> tuple[str, Counter]:
    """(text with every finding replaced by its placeholder, counts by kind)."""
    findings = find_sensitive(text)
    if not findings:
        return text, Counter()
    parts: list[str] = []
    pos = 0
    counts: Counter = Counter()
    for f in findings:
        parts.append(text[pos:f.start])
        parts.append(placeholder(f))
        counts[f.kind] += 1
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts), counts


def scrub_record(record: dict[str, Any], counts: Counter | None = None,
                 fields: Iterable[str] | None = None) -> dict[str, Any]:
    """Scrub every string field that holds text (``text`` and the reader's text fields).

    Fields such as ``title``, ``question``, ``answer``, ``query`` and ``code`` repeat
    parts of ``text``; leaving them unscrubbed would leak what ``text`` hides. Provenance
    fields (url, licence, attribution, hashes) are left alone. ``sha256`` is recomputed.
    """
    counts = counts if counts is not None else Counter()
    names = list(fields) if fields is not None else [
        k for k, v in record.items()
        if isinstance(v, str) and k not in {"url", "path", "license", "attribution", "sha256", "kind",
                                            "source", "language", "site", "page", "platform"}]
    for name in names:
        value = record.get(name)
        if isinstance(value, str) and value:
            scrubbed, found = scrub_text(value)
            if name == "text":
                counts.update(found)  # count each secret once, where it is trained on
            record[name] = scrubbed
    return refresh_sha256(record)
