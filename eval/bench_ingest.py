"""Benchmark (not a test): ingest records/s per source, engine local vs engine ray, one run.

A synthetic Stack Exchange ``Posts.xml`` of ``--mb`` megabytes (default 20) is written
to a temporary folder; then for each source (that dump, and the real tldr and CoNaLa
corpora when the shared folder is there; Debian docs with ``--docs``, fetched once
with apt) and each engine in ``--engines``, the whole ``ingest_sources`` chain (reader,
licence filter, scrub, decontaminate, dedup, write) runs in a fresh process, so its
peak RSS (``resource.getrusage``) and start-up are its own. ``records_per_s`` counts the
source's own pass (benchmark loading and Ray start-up excluded; both are reported);
``ray_over_local`` is the speed ratio measured in the same run. A parse-only pass over
the dump gives the reader's ceiling. Peak memory against input size is
eval/bench_ingest_memory.py.

    python eval/bench_ingest.py                          # 20 MB dump, local and ray
    python eval/bench_ingest.py --engines local --mb 5   # quicker

Writes eval/results/ingest-throughput.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

BYTES_PER_QUESTION = 4300  # of write_synthetic_dump's output at its default sizes


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # ru_maxrss is KiB on Linux


def _baseline() -> dict:
    """A child that only imports what the others import: the floor of every peak."""
    import apex_models.data.sources  # noqa: F401
    import bs4  # noqa: F401
    import datasketch  # noqa: F401

    return {"peak_rss_mb": _peak_rss_mb()}


def _parse(path: str) -> dict:
    from apex_models.data.stackexchange import iter_posts

    started = time.perf_counter()
    rows = sum(1 for _ in iter_posts(Path(path)))
    seconds = time.perf_counter() - started
    return {"rows": rows, "seconds": round(seconds, 2), "rows_per_s": round(rows / seconds, 1),
            "mb_per_s": round(Path(path).stat().st_size / 2**20 / seconds, 2), "peak_rss_mb": _peak_rss_mb()}


def _ingest(source: str, shared: str, out: str, benchmarks: list[str], engine: str = "local",
            raw_dir: str | None = None) -> dict:
    import logging

    from apex_models.config import compose, validate
    from apex_models.data.sources import ingest_sources

    logging.basicConfig(level=logging.WARNING)
    cfg = validate(compose("default")).data.sources.model_dump()
    for name in ("stackexchange", "tldr", "conala", "docs", "repos"):
        cfg[name]["enabled"] = name == source
    cfg["engine"] = engine
    ray_seconds = None
    if engine == "ray":
        from apex_models.data.ray_engine import start_ray

        started = time.perf_counter()
        start_ray(cfg["ray"]["address"], cfg["ray"]["num_cpus"])
        ray_seconds = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    report = ingest_sources(cfg, Path(shared), Path(out), raw_dir=Path(raw_dir) if raw_dir else None,
                            benchmarks=benchmarks)
    seconds = time.perf_counter() - started
    info = report["sources"][source]
    return {"engine": engine, "read": info["read"], "written": info["written"], "seconds": round(seconds, 2),
            "ray_start_seconds": ray_seconds,
            "setup_seconds": report["setup_seconds"], "source_seconds": info["seconds"],
            # records read per second of the source's own pass (benchmark loading excluded)
            "records_per_s": round(info["read"] / max(info["seconds"], 1e-9), 1),
            "input_mb_per_s": None, "peak_rss_mb": _peak_rss_mb(),
            "scrub": info["scrub"], "dedup": info["dedup"], "decontaminated": info["decontaminated"],
            "skipped": info["skipped"]["counts"]}


def synthetic_shared(tmp: Path, real_shared: Path, mb: float) -> tuple[Path, Path, int, float]:
    """A shared/ folder in `tmp` with a synthetic Stack Exchange dump of about `mb` MB (and the
    real benchmarks linked in, so decontamination has its usual work): (shared, dump, bytes,
    seconds to write)."""
    from apex_models.data.stackexchange import write_synthetic_dump

    shared = tmp / "shared"
    se = shared / "corpora" / "stackexchange"
    se.mkdir(parents=True)
    if (real_shared / "benchmarks").is_dir():
        (shared / "benchmarks").symlink_to((real_shared / "benchmarks").resolve())
    dump = se / "synthetic.stackexchange.com-Posts.xml"
    started = time.perf_counter()
    size = write_synthetic_dump(dump, max(1, int(mb * 2**20 / BYTES_PER_QUESTION)))
    return shared, dump, size, round(time.perf_counter() - started, 1)


def _in_child(fn, *args):
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    from apex_models.evaluation.results import write_result

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=20.0, help="size of the synthetic Posts.xml (MB)")
    parser.add_argument("--engines", default="local,ray", help="engines to compare, comma-separated")
    parser.add_argument("--docs", action="store_true", help="also the Debian docs source (apt-get download once)")
    parser.add_argument("--out", type=Path, default=REPO / "eval" / "results" / "ingest-throughput.json")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    real_shared = Path(os.environ.get("APEX_SHARED", REPO.parent / "shared"))
    benchmarks = ["cosqa", "conala", "intent", "qa"]

    results: dict = {"sources": {}}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        shared, dump, size, seconds = synthetic_shared(Path(tmp), real_shared, args.mb)
        results["synthetic_dump"] = {"bytes": size, "mb": round(size / 2**20, 1), "write_seconds": seconds}
        print("dump", json.dumps(results["synthetic_dump"]), file=sys.stderr)
        results["baseline_imports"] = _in_child(_baseline)
        results["stackexchange_parse_only"] = _in_child(_parse, str(dump))
        print("parse", json.dumps(results["stackexchange_parse_only"]), file=sys.stderr)
        runs = [("stackexchange", shared)]
        if real_shared.is_dir():
            runs += [("tldr", real_shared), ("conala", real_shared)]
            if args.docs:
                runs.append(("docs", real_shared))
        for source, root in runs:
            per_engine = {}
            for engine in engines:
                run = _in_child(_ingest, source, str(root), str(Path(tmp) / f"out-{source}-{engine}"), benchmarks,
                                engine, str(Path(tmp) / "raw" / "debian"))
                if source == "stackexchange":
                    run["input_mb_per_s"] = round(size / 2**20 / run["source_seconds"], 2)
                per_engine[engine] = run
                print(f"ingest {source} {engine}", json.dumps(run), file=sys.stderr)
            if "local" in per_engine and "ray" in per_engine:
                per_engine["ray_over_local"] = round(per_engine["ray"]["records_per_s"]
                                                     / per_engine["local"]["records_per_s"], 2)
                per_engine["same_output"] = all(per_engine["ray"][k] == per_engine["local"][k]
                                                for k in ("read", "written", "scrub", "dedup", "decontaminated"))
            results["sources"][source] = per_engine
    cmd = "python eval/bench_ingest.py " + " ".join(sys.argv[1:])
    write_result(args.out, "ingest throughput per source, engine local vs ray", results, command=cmd.strip(),
                 extra={"synthetic_mb": args.mb, "engines": engines})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
