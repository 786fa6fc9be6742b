"""The data stages: ingest corpora, build task datasets, lay out held-out benchmarks."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from apex_models.config import Params
from apex_models.layout import layout

log = logging.getLogger(__name__)


def run_ingest(params: Params) -> dict[str, Any]:
    """Fetch the pinned distributions and write one licensed, hashed record per file."""
    from apex_models.data.pypi import ingest_pypi_code

    lay, code = layout(params), params.data.code
    lay.ingest.mkdir(parents=True, exist_ok=True)
    report = ingest_pypi_code(code.packages, lay.raw_pypi, lay.code_files, code.license_allowlist,
                              code.max_files_per_package, code.max_file_bytes, index_url=code.index_url)
    (lay.ingest / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def run_datasets(params: Params) -> dict[str, Any]:
    """Pairs split by package, decontaminated against every benchmark, plus an in-domain
    held-out retrieval set (BEIR) built from the test split."""
    from apex_models.data.embedder_dataset import build_embedder_dataset, write_pairs_beir
    from apex_models.data.task_data import read_split

    lay = layout(params)
    shared = lay.shared_or_none()
    report = build_embedder_dataset(
        lay.code_files, shared or lay.shared, lay.embedder_data, params.data.pairs.model_dump(),
        include_conala=params.data.conala.enabled, decontaminate_names=list(params.data.decontaminate.benchmarks),
        seed=params.seed)
    write_pairs_beir(read_split(lay.embedder_data / "test"), lay.benchmark("code-heldout"))
    return report


def run_benchmarks(params: Params) -> dict[str, Any]:
    """CoSQA dev (selection) and test (report) in BEIR layout; skipped without shared/."""
    from apex_models.data.embedder_dataset import write_cosqa_beir

    lay, cosqa = layout(params), params.evaluate.cosqa
    lay.benchmarks.mkdir(parents=True, exist_ok=True)
    shared = lay.shared_or_none()
    written = {}
    for split, n in (("dev", cosqa.dev_queries), ("test", cosqa.test_queries)):
        out = lay.benchmark(f"cosqa-{split}")
        path = write_cosqa_beir(shared, split, out, n, cosqa.corpus_limit, params.seed) if shared else None
        if path is None:
            out.mkdir(parents=True, exist_ok=True)  # DVC needs the out; empty means skipped
            (out / "SKIPPED").write_text("shared/benchmarks/cosqa was not found\n")
        written[split] = str(path) if path else None
    return written


def run_ingest_sources(params: Params) -> dict[str, Any]:
    """Stack Exchange, CoNaLa, tldr and documentation as scrubbed, deduplicated and
    decontaminated records in ``<data>/sources/`` (Debian downloads kept in ``<data>/raw/debian``)."""
    from apex_models.data.sources import ingest_sources

    if params.data.sources is None:
        raise ValueError("params.yaml has no data.sources section: re-run `python pipelines/compose.py`")
    lay = layout(params)
    data = Path(params.paths.data)
    (data / "raw" / "debian").mkdir(parents=True, exist_ok=True)  # a DVC out even when docs are off
    return ingest_sources(params.data.sources, lay.shared_or_none(), data / "sources",
                          raw_dir=data / "raw" / "debian", benchmarks=list(params.data.decontaminate.benchmarks))
