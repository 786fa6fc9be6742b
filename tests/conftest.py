"""Shared fixtures: the repository, the shared folder, and the tiny profile's whole DAG.

Like lightning-hydra-template's conftest: compose the real config and shrink it (the
`tiny` profile), never a hand-written test config.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """shared/ beside the repository (or APEX_SHARED); tests needing it skip without it."""
    path = Path(os.environ.get("APEX_SHARED", REPO_ROOT.parent / "shared")).resolve()
    if not path.is_dir():
        pytest.skip(f"shared folder {path} not present")
    return path


def _copy_repo(dst: Path) -> None:
    """A clean copy of the tracked tree plus untracked non-ignored files (what CI clones)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=REPO_ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = REPO_ROOT / name.decode()
        if src.is_file():
            target = dst / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


@pytest.fixture(scope="session")
def tiny_dag(tmp_path_factory, shared_dir) -> Path:
    """Run `dvc repro` on the tiny profile in a temporary copy of the repository.

    Downloads of the pinned distributions are cached across test runs in
    .cache/pypi-tiny so a re-run needs no network.
    """
    work = tmp_path_factory.mktemp("dag") / "repo"
    _copy_repo(work)
    env = {**os.environ, "APEX_SHARED": str(shared_dir), "PYTHONPATH": str(work / "src"),
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(work / ".hf"),
           "MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")
    cache = REPO_ROOT / ".cache" / "pypi-tiny"
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copytree(cache, work / "data" / "raw" / "pypi")

    def run(*cmd: str) -> None:
        proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n"
                                 f"{proc.stderr[-8000:]}")

    bin_dir = Path(sys.executable).parent
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    run("git", "init", "-q")
    run(sys.executable, "pipelines/compose.py", "--profile", "tiny")
    run("dvc", "repro")
    for archive in (work / "data" / "raw" / "pypi").iterdir():
        if archive.is_file() and not (cache / archive.name).exists():
            shutil.copy2(archive, cache / archive.name)
    return work


@pytest.fixture(scope="session")
def minilm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle exported from the packaged MiniLM (about 10 s, once per run). Read-only:
    tests that modify files must copy it first (runtime_fixtures.copy_bundle)."""
    from runtime_fixtures import build_minilm_bundle

    return build_minilm_bundle(tmp_path_factory.mktemp("minilm_bundle"))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL for the cloud tests: $APEX_TEST_DATABASE_URL (CI starts one), else a
    throwaway cluster from the local server binaries (initdb into a temporary folder, Unix
    socket only, stopped at the end), else skip with the reason."""
    pytest.importorskip("psycopg", reason="the cloud extra (psycopg) is not installed")
    url = os.environ.get("APEX_TEST_DATABASE_URL")
    if url:
        yield url
        return
    from apex_models.cloud.postgres import LocalPostgres, find_bin_dir

    if find_bin_dir() is None:
        pytest.skip("no PostgreSQL: set APEX_TEST_DATABASE_URL or install the postgresql server package")
    folder = Path(tempfile.mkdtemp(prefix="apex-test-pg-"))
    folder.chmod(0o755)  # as root the server runs as `postgres`, which must reach its data folder
    server = LocalPostgres(folder)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def minilm_embedder(minilm_bundle: Path):
    """The bundle's default embedder, loaded once for every cloud test."""
    from apex_models.runtime.bundle import load_bundle

    return load_bundle(minilm_bundle).embedder()
