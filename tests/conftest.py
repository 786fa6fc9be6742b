"""Shared fixtures. Keep this minimal: module-specific helpers live beside their tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def minilm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle exported from the packaged MiniLM (about 10 s, once per run). Read-only:
    tests that modify files must copy it first (runtime_fixtures.copy_bundle)."""
    from runtime_fixtures import build_minilm_bundle

    return build_minilm_bundle(tmp_path_factory.mktemp("minilm_bundle"))
