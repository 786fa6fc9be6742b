"""Benchmark (not a test): the cloud memory service under concurrent writers and searchers, on loopback.

Starts `apex serve` on 127.0.0.1 (a private PostgreSQL in a temporary folder, removed
afterwards), seeds a team, then runs concurrent clients, half adding memories and half
searching (hybrid), until either the request budget or the time budget is spent.
Reports per operation: requests, errors (any non-2xx or transport failure), throughput,
latency p50/p99 (client side, HTTP round trip including embedding).

    python eval/bench_cloud_load.py --bundle export/bundles/default --clients 8 --requests 2000 --seconds 60

Writes eval/results/cloud-load.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from apex_models.evaluation.results import write_result  # noqa: E402

WORDS = ("cache database retry timeout pool migration index deploy staging kubernetes token parser "
         "queue worker schema backup lint format release pin upgrade alpine wheel socket").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def note(rng: np.random.Generator) -> str:
    return " ".join(rng.choice(WORDS, size=int(rng.integers(8, 20))))


def start_server(bundle: Path, folder: Path, port: int) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "APEX_RATE_LIMIT_PER_MINUTE": "1000000",
           "APEX_RATE_LIMIT_BURST": "100000", "APEX_POOL_SIZE": "16"}
    env.pop("APEX_DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "apex_models.cli", "serve", "--bundle", str(bundle), "--host",
                             "127.0.0.1", "--port", str(port), "--data-dir", str(folder / "cloud")],
                            env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "server.log", "w"))
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {(folder / 'server.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                return proc, (folder / "cloud" / "operator-token").read_text().strip()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit("server did not become healthy in 180 s")


def _shown(path: Path) -> str:
    """The bundle path as given relative to the repository (results name no machine paths)."""
    try:
        return str(path.absolute().relative_to(ROOT))
    except ValueError:
        return path.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, default=Path("export/bundles/default"))
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (half write, half search)")
    parser.add_argument("--requests", type=int, default=2000, help="total request budget")
    parser.add_argument("--seconds", type=float, default=60.0, help="time budget")
    parser.add_argument("--seed-memories", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("eval/results/cloud-load.json"))
    args = parser.parse_args()
    if not (args.bundle / "manifest.json").is_file():
        raise SystemExit(f"no bundle at {args.bundle}: run the pipeline or pass --bundle")

    load_at_start = [round(x, 2) for x in os.getloadavg()]  # other work on the machine skews the figures
    folder = Path(tempfile.mkdtemp(prefix="apex-load-"))
    folder.chmod(0o755)  # as root the private PostgreSQL runs as `postgres`
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc, operator = start_server(args.bundle.absolute(), folder, port)
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {operator}"}, timeout=60) as http:
            team = http.post("/v1/teams", json={"name": "load"}).json()["id"]
            rng = np.random.default_rng(0)
            changes = [{"id": str(__import__("uuid").uuid4()), "updated_at": "2026-01-01T00:00:00Z",
                        "text": note(rng)} for _ in range(args.seed_memories)]
            for start in range(0, len(changes), 250):
                http.post(f"/v1/teams/{team}/sync/push", json={"changes": changes[start:start + 250]}).raise_for_status()
        lat: dict[str, list[float]] = {"add": [], "search": []}
        errors = {"add": 0, "search": 0}
        budget = {"left": args.requests}
        lock = threading.Lock()
        stop_at = time.monotonic() + args.seconds

        def client(i: int) -> None:
            op = "add" if i % 2 == 0 else "search"
            local = np.random.default_rng(i + 1)
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {operator}"}, timeout=60) as http:
                while time.monotonic() < stop_at:
                    with lock:
                        if budget["left"] <= 0:
                            return
                        budget["left"] -= 1
                    t0 = time.perf_counter()
                    try:
                        if op == "add":
                            r = http.post(f"/v1/teams/{team}/memories", json={"text": note(local), "tags": ["load"]})
                        else:
                            r = http.post(f"/v1/teams/{team}/search", json={"query": note(local)[:60], "k": 10})
                        ok = r.status_code < 300
                    except httpx.HTTPError:
                        ok = False
                    elapsed = time.perf_counter() - t0
                    with lock:
                        lat[op].append(elapsed)
                        errors[op] += 0 if ok else 1

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        began = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - began
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        shutil.rmtree(folder, ignore_errors=True)

    def summary(values: list[float], errs: int) -> dict:
        arr = np.array(values) * 1000 if values else np.zeros(1)
        return {"requests": len(values), "errors": errs, "throughput_rps": round(len(values) / wall, 2),
                "p50_ms": round(float(np.percentile(arr, 50)), 2), "p99_ms": round(float(np.percentile(arr, 99)), 2)}

    total = len(lat["add"]) + len(lat["search"])
    results = {"add": summary(lat["add"], errors["add"]), "search": summary(lat["search"], errors["search"]),
               "all": {"requests": total, "errors": errors["add"] + errors["search"],
                       "throughput_rps": round(total / wall, 2), "wall_s": round(wall, 2)}}
    config = {"clients": args.clients, "request_budget": args.requests, "time_budget_s": args.seconds,
              "seed_memories": args.seed_memories, "bundle": _shown(args.bundle), "address": "127.0.0.1",
              "load_average_at_start": load_at_start,
              "server": "apex serve, one uvicorn process, private PostgreSQL 15 on a Unix socket"}
    write_result(args.out, "cloud-load", results, extra={"config": config})
    print(__import__("json").dumps(results, indent=2))


if __name__ == "__main__":
    main()
