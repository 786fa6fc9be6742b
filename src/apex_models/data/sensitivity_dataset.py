"""The sensitivity dataset: windows of the pipeline's own code and prose with generated
secrets, personal data and look-alikes injected at known spans (see
:mod:`apex_models.sensitivity.synth`).

Contexts are split into train/dev/test by source file *before* anything is injected, so
no window of a test file was seen in training. Every context is scrubbed first (the
detectors replace anything that looks sensitive by a typed placeholder), so the only
sensitive spans in the data are the ones injected, and their labels are exact.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from apex_models.data.scrub import scrub_text
from apex_models.data.task_data import read_split, save_splits
from apex_models.sensitivity.synth import build_examples

SPLITS = ("train", "dev", "test")


def _split_of(key: str, fractions: dict[str, float]) -> str:
    x = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    edge = 0.0
    for split in SPLITS:
        edge += fractions[split]
        if x < edge:
            return split
    return "train"


def read_contexts(code_file: Path | None, sources_dir: Path | None, sources: list[str],
                  max_records: int) -> Iterator[tuple[str, str]]:
    """(source id, text) of the ingested code files and the named source corpora, at most
    `max_records` from each, in file order (deterministic)."""
    files: list[tuple[str, Path]] = []
    if "code" in sources and code_file is not None and code_file.is_file():
        files.append(("code", code_file))
    for name in sources:
        if name != "code" and sources_dir is not None and (sources_dir / f"{name}.jsonl").is_file():
            files.append((name, sources_dir / f"{name}.jsonl"))
    for name, path in files:
        with open(path, encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i >= max_records:
                    break
                row = json.loads(line)
                text = row.get("text") or ""
                if text.strip():
                    yield f"{name}:{row.get('path') or row.get('url') or i}", text


def build_sensitivity_dataset(code_file: Path | None, sources_dir: Path | None, out_dir: Path, cfg,
                              seed: int) -> dict[str, Any]:
    """Write train/dev/test (text, spans, lookalikes, label, source) as a Hugging Face
    ``DatasetDict``, report.json and the card under `out_dir`."""
    by_split: dict[str, list[tuple[str, str]]] = {s: [] for s in SPLITS}
    scrubbed: Counter = Counter()
    for source, text in read_contexts(code_file, sources_dir, cfg.sources, cfg.max_records_per_source):
        clean, found = scrub_text(text[: cfg.max_chars * 40])
        scrubbed.update(found)
        by_split[_split_of(source, cfg.split_fractions)].append((source, clean))
    if not by_split["train"]:
        raise ValueError("no training contexts: run the ingest and ingest_sources stages first")
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {"train": cfg.train_examples, "dev": cfg.dev_examples, "test": cfg.test_examples}
    report: dict[str, Any] = {"contexts": {s: len(v) for s, v in by_split.items()},
                              "scrubbed_before_injection": dict(sorted(scrubbed.items())), "splits": {}}
    rows: dict[str, list[dict[str, Any]]] = {}
    for i, split in enumerate(SPLITS):
        contexts = by_split[split] or by_split["train"]
        examples = build_examples(contexts, sizes[split], seed * 10 + i, dict(cfg.mix), cfg.max_chars)
        rows[split] = [to_arrow_row(ex.to_json()) for ex in examples]
        spans = Counter(t for ex in examples for _, _, t in ex.spans)
        report["splits"][split] = {"examples": len(examples), "labels": dict(Counter(ex.label for ex in examples)),
                                   "spans": dict(spans),
                                   "sources": dict(Counter(ex.source.split(":")[0] for ex in examples))}
    hashes = save_splits(out_dir, rows)
    for split in SPLITS:
        report["splits"][split]["sha256"] = hashes[split]
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "README.md").write_text(_card(report))
    return report


_LICENCES = {"code": "the file's own licence (an allowlisted SPDX id, per record in data/ingest/code.jsonl)",
             "stackexchange": "CC BY-SA 4.0 (Stack Exchange; attribution per record in data/sources)",
             "conala": "CC BY-SA 4.0 (Stack Overflow via CoNaLa)", "tldr": "CC BY 4.0 (tldr-pages)"}


def _card(report: dict[str, Any]) -> str:
    """The dataset card: what it is, its columns, and counts per split, label, source and span type."""
    splits = report["splits"]
    sources = sorted({src for info in splits.values() for src in info["sources"]})
    labels = sorted({lab for info in splits.values() for lab in info["labels"]})
    spans = sorted({t for info in splits.values() for t in info["spans"]})
    lines = ["# Sensitivity dataset (synthetic spans in real text)", "",
             "Windows of the pipeline's ingested code and scrubbed Q&A/command corpora, with generated secrets, "
             "internal personal data and look-alikes injected at known character spans "
             "(apex_models.sensitivity.synth). Split by source file before injection, so no window's file is in "
             "two splits. No credential in it is real; nothing is taken from any benchmark (the contexts come "
             "from stages that decontaminated against every benchmark, and the CredSweeper samples are never read).",
             "", "A Hugging Face `DatasetDict` (`datasets.load_from_disk`), splits train/dev/test. Columns: `text`; "
             "`spans`, the labelled character spans as {start, end, type}; `lookalikes`, injected non-secrets "
             "as {start, end} (label O, for measuring false positives); `label` (public, internal or secret) "
             "and `source` (the file or record the window came from).", "",
             "| split | contexts | examples | " + " | ".join(labels) + " | " + " | ".join(f"{t} spans" for t in spans)
             + " |", "| --- |" + " ---: |" * (2 + len(labels) + len(spans))]
    for split, info in splits.items():
        lines.append(f"| {split} | {report['contexts'][split]} | {info['examples']} | "
                     + " | ".join(str(info["labels"].get(lab, 0)) for lab in labels) + " | "
                     + " | ".join(str(info["spans"].get(t, 0)) for t in spans) + " |")
    lines += ["", "| source | licence | " + " | ".join(splits) + " |", "| --- | --- |" + " ---: |" * len(splits)]
    for src in sources:
        lines.append(f"| {src} | {_LICENCES.get(src, 'see data/sources')} | "
                     + " | ".join(str(info["sources"].get(src, 0)) for info in splits.values()) + " |")
    lines += ["", "Secrets and personal data already in the contexts were replaced by typed placeholders before "
              f"injection (apex_models.data.scrub): {json.dumps(report['scrubbed_before_injection'])}.", ""]
    return "\n".join(lines)


def to_arrow_row(row: dict[str, Any]) -> dict[str, Any]:
    """An example as Arrow can hold it: spans [start, end, type] (a mixed list) become
    {start, end, type} structs and look-alikes [start, end] become {start, end}."""
    return {**row, "spans": [{"start": int(a), "end": int(b), "type": str(t)} for a, b, t in row["spans"]],
            "lookalikes": [{"start": int(a), "end": int(b)} for a, b in row["lookalikes"]]}


def from_arrow_row(row: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`to_arrow_row`: the list form the recipe and the metrics index."""
    return {**row, "spans": [[s["start"], s["end"], s["type"]] for s in row["spans"] or []],
            "lookalikes": [[s["start"], s["end"]] for s in row["lookalikes"] or []]}


def read_examples(path: Path) -> list[dict[str, Any]]:
    """The examples of one split folder (``<sensitivity dataset>/<split>``), spans as lists."""
    rows = [from_arrow_row(row) for row in read_split(path)]
    if not rows:
        raise ValueError(f"{path} holds no examples")
    return rows


def run_sensitivity_dataset(params) -> dict[str, Any]:
    """The sensitivity_dataset stage: contexts from the ingest and ingest_sources outputs."""
    from apex_models.layout import layout
    from apex_models.training.sensitivity import require_config, sensitivity_paths

    cfg = require_config(params)
    lay = layout(params)
    return build_sensitivity_dataset(lay.code_files, Path(params.paths.data) / "sources",
                                     sensitivity_paths(params).data, cfg.data, params.seed)
