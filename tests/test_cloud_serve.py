"""`apex serve` on a laptop: no database URL, so it starts a private PostgreSQL in its data
folder, writes the first operator's token there (mode 600), answers on loopback, and
stops the database when it stops."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_apex_serve_runs_with_an_embedded_postgres(minilm_bundle, repo_root) -> None:
    from apex_models.cloud.postgres import find_bin_dir

    if find_bin_dir() is None:
        pytest.skip("PostgreSQL server binaries not installed")
    folder = Path(tempfile.mkdtemp(prefix="apex-serve-"))
    folder.chmod(0o755)  # as root the private PostgreSQL runs as `postgres`
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(repo_root / "src")}
    env.pop("APEX_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "apex_models.cli", "serve", "--bundle", str(minilm_bundle),
                             "--port", str(port), "--data-dir", str(folder / "cloud")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline, healthy = time.monotonic() + 180, False
        while time.monotonic() < deadline and proc.poll() is None and not healthy:
            try:
                healthy = httpx.get(f"{base}/v1/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(0.5)
        assert healthy, proc.stderr.read() if proc.poll() is not None else "not healthy in 180 s"
        token_file = folder / "cloud" / "operator-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        me = httpx.get(f"{base}/v1/me", headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
        assert me["user"]["is_operator"] is True
        assert httpx.get(f"{base}/openapi.json", timeout=10).json()["info"]["title"] == "apex cloud memory"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert not (folder / "cloud" / "pgdata" / "postmaster.pid").exists()   # the database stopped with it
    shutil.rmtree(folder, ignore_errors=True)
