"""From characters to token labels and back: the one alignment training and runtime share.

Training labels tokens from character spans (:func:`bio_labels`); the model's per-token
probabilities become character spans again (:func:`spans_from_probs`); long texts are
cut into overlapping windows (:func:`windows`). numpy only, so the torch-free runtime
and the training recipe cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from apex_models.sensitivity.synth import TOKEN_LABELS

IGNORE = -100
_INDEX = {name: i for i, name in enumerate(TOKEN_LABELS)}


@dataclass(frozen=True)
class SensitiveSpan:
    """``text[start:end]`` is sensitive: ``kind`` SECRET or PII; ``source`` model or a detector kind."""

    start: int
    end: int
    kind: str
    source: str

    def to_json(self) -> dict:
        return {"start": self.start, "end": self.end, "kind": self.kind, "source": self.source}


def bio_labels(offsets: Sequence[tuple[int, int]], spans: Iterable[Sequence], special: Sequence[bool]) -> list[int]:
    """Token label ids for char `spans` ((start, end, type)): B- on a span's first token, I- on
    the rest, O elsewhere, IGNORE on special and empty tokens."""
    spans = sorted((int(s[0]), int(s[1]), str(s[2])) for s in spans)
    labels: list[int] = []
    prev_span = None
    for (start, end), is_special in zip(offsets, special):
        if is_special or end <= start:
            labels.append(IGNORE)
            continue
        hit = next((s for s in spans if start < s[1] and s[0] < end), None)
        if hit is None:
            labels.append(_INDEX["O"])
        else:
            labels.append(_INDEX[("I-" if hit == prev_span else "B-") + hit[2]])
        prev_span = hit
    return labels


def windows(n_tokens: int, body: int, stride: int) -> list[tuple[int, int]]:
    """[start, end) token ranges of at most `body` tokens covering `n_tokens`, overlapping by `stride`."""
    if n_tokens <= body:
        return [(0, n_tokens)]
    step = max(1, body - stride)
    out = []
    start = 0
    while True:
        end = min(start + body, n_tokens)
        out.append((start, end))
        if end == n_tokens:
            return out
        start += step


def type_probs(probs: np.ndarray) -> np.ndarray:
    """[n, 5] label probabilities -> [n, 2] probability of SECRET and of PII (B + I)."""
    return np.stack([probs[:, _INDEX["B-SECRET"]] + probs[:, _INDEX["I-SECRET"]],
                     probs[:, _INDEX["B-PII"]] + probs[:, _INDEX["I-PII"]]], axis=1)


def spans_from_probs(offsets: Sequence[tuple[int, int]], probs: np.ndarray, threshold: float,
                     text: str | None = None) -> list[SensitiveSpan]:
    """Merge consecutive tokens whose SECRET (or PII) probability passes `threshold` into char spans.

    Two flagged tokens of one kind join when they touch (a secret's word pieces) or, for
    secrets, when only line breaks and indentation lie between them (a private-key block);
    a space between them ends the span.
    """
    typed = type_probs(np.asarray(probs, dtype=np.float64))
    out: list[SensitiveSpan] = []
    current: list | None = None
    for (start, end), (p_secret, p_pii) in zip(offsets, typed):
        if end <= start:
            continue
        kind = None
        if max(p_secret, p_pii) >= threshold:
            kind = "SECRET" if p_secret >= p_pii else "PII"
        if kind is None:
            if current:
                out.append(SensitiveSpan(current[0], current[1], current[2], "model"))
                current = None
            continue
        if current and current[2] == kind and _joins(text, current[1], start, kind):
            current[1] = end
            continue
        if current:
            out.append(SensitiveSpan(current[0], current[1], current[2], "model"))
        current = [start, end, kind]
    if current:
        out.append(SensitiveSpan(current[0], current[1], current[2], "model"))
    if text is not None:  # a span never starts or ends inside a run of spaces
        out = [_whole_value(text, s) for s in out if text[s.start:s.end].strip()]
        out = union(out)
    return out


_DELIMITERS = frozenset(" \t\r\n\"'`=:,;()[]{}<>|")


def _whole_value(text: str, span: "SensitiveSpan") -> "SensitiveSpan":
    """Grow a SECRET span to the whole delimited value it lies in.

    A credential is one unbroken run of characters; when a word piece in its middle or
    at its edge falls under the threshold, the model's span would be cut in two or end
    early, and half a key would stay unredacted. Quotes, whitespace and assignment
    punctuation delimit a value.
    """
    if span.kind != "SECRET":
        return span
    start, end = span.start, span.end
    while start > 0 and text[start - 1] not in _DELIMITERS:
        start -= 1
    while end < len(text) and text[end] not in _DELIMITERS:
        end += 1
    return SensitiveSpan(start, end, span.kind, span.source)


def _joins(text: str | None, prev_end: int, start: int, kind: str) -> bool:
    if text is None or start <= prev_end:
        return True
    gap = text[prev_end:start]
    if not gap.strip():
        return kind == "SECRET" and "\n" in gap
    return False


def union(spans: Iterable[SensitiveSpan]) -> list[SensitiveSpan]:
    """Merge overlapping spans of the same kind (SECRET wins an overlap with PII); sorted."""
    ordered = sorted(spans, key=lambda s: (s.start, s.end))
    out: list[SensitiveSpan] = []
    for s in ordered:
        if out and s.start < out[-1].end:
            last = out[-1]
            kind = "SECRET" if "SECRET" in (last.kind, s.kind) else last.kind
            source = last.source if last.source == s.source else f"{last.source}+{s.source}"
            out[-1] = SensitiveSpan(last.start, max(last.end, s.end), kind, source)
        else:
            out.append(s)
    return out


def doc_label(spans: Iterable[SensitiveSpan]) -> str:
    kinds = {s.kind for s in spans}
    return "secret" if "SECRET" in kinds else "internal" if "PII" in kinds else "public"


def span_prf(pred: Sequence[Sequence[tuple[int, int]]], gold: Sequence[Sequence[tuple[int, int]]]) -> dict:
    """Value-level P/R/F1 over documents: a predicted span is right when it overlaps a gold one."""
    tp_p = n_p = tp_r = n_g = 0
    for p_spans, g_spans in zip(pred, gold):
        n_p += len(p_spans)
        n_g += len(g_spans)
        tp_p += sum(any(a < d and c < b for c, d in g_spans) for a, b in p_spans)
        tp_r += sum(any(a < d and c < b for a, b in p_spans) for c, d in g_spans)
    p = tp_p / n_p if n_p else 0.0
    r = tp_r / n_g if n_g else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "predicted": n_p, "gold": n_g}


def span_scores(rows: list[dict], predicted: list[list[SensitiveSpan]]) -> dict[str, dict]:
    """Value-level P/R/F1 per span type and over both (a span counts when types match)."""
    out = {}
    for kind in ("SECRET", "PII", None):
        pred = [[(s.start, s.end) for s in spans if kind is None or s.kind == kind] for spans in predicted]
        gold = [[(s[0], s[1]) for s in row["spans"] if kind is None or s[2] == kind] for row in rows]
        out[(kind or "all").lower()] = span_prf(pred, gold)
    return out
