"""Where each stage reads and writes, derived from `paths` in one place.

dvc.yaml names the same paths (templated from params.yaml), so a stage and DVC always
agree on what a stage's outputs are.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from apex_models.config import Params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    shared: Path
    raw_pypi: Path
    ingest: Path
    sources: Path
    embedder_data: Path
    ranker_data: Path
    benchmarks: Path
    embedder_model: Path
    results: Path
    export_embedder: Path
    bundle: Path

    @property
    def code_files(self) -> Path:
        return self.ingest / "code.jsonl"

    def benchmark(self, name: str) -> Path:
        return self.benchmarks / name

    def shared_or_none(self) -> Path | None:
        """The shared corpora/benchmarks folder, or None with a warning when it is absent."""
        if self.shared.is_dir():
            return self.shared
        log.warning("shared folder %s not found: its corpora and benchmarks are skipped", self.shared)
        return None


def layout(params: Params) -> Layout:
    p = params.paths
    data = Path(p.data)
    return Layout(
        shared=Path(p.shared),
        raw_pypi=data / "raw" / "pypi",
        ingest=data / "ingest",
        sources=data / "sources",
        embedder_data=data / "datasets" / "embedder",
        ranker_data=data / "datasets" / "ranker",
        benchmarks=data / "benchmarks",
        embedder_model=Path(p.models) / "embedder",
        results=Path(p.results),
        export_embedder=Path(p.export) / "embedder",
        bundle=Path(p.bundle),
    )
