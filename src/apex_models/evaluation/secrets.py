"""Score secret finders on the CredSweeper samples: line- and value-level precision/recall.

The benchmark (``benchmarks/secrets/credsweeper``, see its README) lists, per sample
file, the findings CredSweeper's maintainers expect with its ML filter on (rule, line
number, value position on the line). Every listed value is a positive; every other
line of the samples is negative. These are the maintainers' expectations, not an
independent annotation: every figure computed here says so (``labels`` in the output).

Two granularities, because they answer different questions:

- **line**: would a reviewer be pointed at the right lines? A predicted line is a true
  positive when the benchmark expects a finding on it.
- **value**: is the right text redacted? An expected value is found when a predicted
  span overlaps it on its line; a predicted span (cut at line ends) is correct when it
  overlaps an expected value.

Pure Python and torch-free: any system that maps a text to character spans is scored
the same way (detectors, the ONNX model, their union, CredSweeper's own candidates).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

LABELS_NOTE = ("labels are CredSweeper maintainers' expected findings (expected_ml.json), "
               "not an independent annotation")


@dataclass(frozen=True)
class LineSpan:
    """A span on one line: 1-based line number, start/end offsets within that line."""

    line: int
    start: int
    end: int


def read_sample(path: Path) -> str:
    """A sample file as text: UTF-16 when it carries a BOM or NUL bytes, else UTF-8 (bad bytes replaced)."""
    raw = path.read_bytes()
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or raw[:200].count(b"\x00") > 20:
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            pass
    return raw.decode("utf-8", errors="replace")


def line_starts(text: str) -> list[int]:
    starts = [0]
    starts.extend(i + 1 for i, ch in enumerate(text) if ch == "\n")
    return starts


def to_line_spans(text: str, spans: Iterable[tuple[int, int]], starts: list[int] | None = None) -> list[LineSpan]:
    """Cut character spans of `text` at line ends into per-line spans (1-based lines)."""
    import bisect

    starts = starts if starts is not None else line_starts(text)
    out: list[LineSpan] = []
    for start, end in spans:
        if end <= start:
            continue
        line = bisect.bisect_right(starts, start) - 1
        pos = start
        while pos < end and line < len(starts):
            line_end = starts[line + 1] - 1 if line + 1 < len(starts) else len(text)
            seg_end = min(end, line_end)
            if seg_end > pos:
                out.append(LineSpan(line + 1, pos - starts[line], seg_end - starts[line]))
            line += 1
            if line < len(starts):
                pos = max(pos, starts[line])
    return out


def load_findings(path: Path) -> dict[str, list[LineSpan]]:
    """CredSweeper's report format -> {sample file name: value spans}."""
    found: dict[str, list[LineSpan]] = defaultdict(list)
    for item in json.loads(Path(path).read_text(encoding="utf-8")):
        for line in item["line_data_list"]:
            start, end = line.get("value_start", -1), line.get("value_end", -1)
            if start is None or start < 0:
                start, end = 0, max(len(line.get("line", "")), 1)
            found[Path(line["path"]).name].append(LineSpan(line["line_num"], start, end))
    return dict(found)


def _overlap(a: LineSpan, b: LineSpan) -> bool:
    return a.line == b.line and a.start < b.end and b.start < a.end


def _prf(tp_p: int, n_pred: int, tp_r: int, n_true: int) -> dict[str, float | int]:
    p = tp_p / n_pred if n_pred else 0.0
    r = tp_r / n_true if n_true else 0.0
    f1 = 2 * p * r / (p + r) if p + r else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4),
            "predicted": n_pred, "expected": n_true}


def score(predicted: dict[str, list[LineSpan]], expected: dict[str, list[LineSpan]],
          files: Iterable[str]) -> dict[str, dict]:
    """Line- and value-level P/R/F1 of `predicted` against `expected` over `files`."""
    pred_lines = tp_lines = true_lines = found_lines = 0
    pred_values = tp_values = true_values = found_values = 0
    for name in files:
        pred, true = predicted.get(name, []), expected.get(name, [])
        p_lines, t_lines = {s.line for s in pred}, {s.line for s in true}
        pred_lines += len(p_lines)
        true_lines += len(t_lines)
        tp_lines += len(p_lines & t_lines)
        found_lines += len(t_lines & p_lines)
        by_line: dict[int, list[LineSpan]] = defaultdict(list)
        for s in true:
            by_line[s.line].append(s)
        pred_by_line: dict[int, list[LineSpan]] = defaultdict(list)
        for s in pred:
            pred_by_line[s.line].append(s)
        pred_values += len(pred)
        true_values += len(true)
        tp_values += sum(any(_overlap(s, t) for t in by_line[s.line]) for s in pred)
        found_values += sum(any(_overlap(t, s) for s in pred_by_line[t.line]) for t in true)
    return {"line": _prf(tp_lines, pred_lines, found_lines, true_lines),
            "value": _prf(tp_values, pred_values, found_values, true_values)}


def half_of(name: str) -> str:
    """``dev`` or ``test``: a fixed half of the sample files, by the sha256 of the file name.

    The benchmark ships no dev split. Anything chosen by looking at its errors (a filter, a
    threshold) is chosen on ``dev`` only and judged on ``test``; figures over all files are
    reported beside them, and say so."""
    return "dev" if int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 2 == 0 else "test"


def benchmark_root(shared: Path) -> Path:
    root = Path(shared) / "benchmarks" / "secrets" / "credsweeper"
    if not (root / "expected_ml.json").is_file():
        raise FileNotFoundError(f"{root}/expected_ml.json not found: set paths.shared / $APEX_SHARED")
    return root


def sample_texts(root: Path) -> dict[str, str]:
    """{file name: text} of every sample file, in name order."""
    return {p.name: read_sample(p) for p in sorted((root / "samples").iterdir()) if p.is_file()}


def predict_spans(texts: dict[str, str], finder: Callable[[str], list[tuple[int, int]]],
                  progress: bool = False) -> dict[str, list[LineSpan]]:
    """Run `finder(text) -> [(start, end)]` over every sample and cut its spans at line ends."""
    from tqdm.auto import tqdm

    out: dict[str, list[LineSpan]] = {}
    for name, text in tqdm(texts.items(), desc="secrets benchmark", unit="file", disable=not progress):
        out[name] = to_line_spans(text, finder(text))
    return out


def misses(predicted: dict[str, list[LineSpan]], expected: dict[str, list[LineSpan]]) -> dict[str, int]:
    """Expected values no prediction overlaps, counted by sample file: where rules fall short."""
    out: dict[str, int] = {}
    for name, true in expected.items():
        pred = predicted.get(name, [])
        n = sum(not any(_overlap(t, s) for s in pred) for t in true)
        if n:
            out[name] = n
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
