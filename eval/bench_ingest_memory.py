"""Benchmark (not a test): peak memory of the Stack Exchange ingest path against input size.

Writes synthetic ``Posts.xml`` dumps of ``--sizes`` megabytes (default 64 and 512:
an 8x step) and runs, each in a fresh process so its peak RSS (``ru_maxrss``) is its
own:

- ``parse``: the streaming XML reader alone (``iter_posts``) over the whole dump;
- ``join``: the real record reader (``qa_records``: two streaming passes over the whole
  dump into an on-disk SQLite join, then the joined questions with HTML turned into
  text), stopped after ``--join-records`` records;
- ``chain``: the whole ``ingest_sources`` stage (reader, licence filter, scrub,
  decontaminate against the real benchmarks, dedup, JSONL writing) with
  ``max_records_per_source`` = ``--chain-records``.

Both caps only shorten the per-record work (HTML to text runs at a few hundred records/s
on this 2-core machine, the whole chain at about 100): the two passes and the join,
where memory could grow with the input, always cover the whole dump.

Bounded memory shows as a peak RSS that stays flat from the small dump to the large one
and far below the input size. A 10 GB dump is this, ten times longer.

    python eval/bench_ingest_memory.py                      # 64 MB and 512 MB
    python eval/bench_ingest_memory.py --sizes 128,1024     # 1 GB

Writes eval/results/ingest-memory.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "eval"))

from bench_ingest import _baseline, _in_child, _parse, _peak_rss_mb, synthetic_shared  # noqa: E402


def _join(path: str, cap: int) -> dict:
    import itertools

    from apex_models.data.stackexchange import qa_records

    started = time.perf_counter()
    records = sum(1 for _ in itertools.islice(qa_records(Path(path), "synthetic.stackexchange.com"), cap))
    seconds = time.perf_counter() - started
    return {"records": records, "seconds": round(seconds, 1), "peak_rss_mb": _peak_rss_mb()}


def _chain(shared: str, out: str, cap: int) -> dict:
    import logging

    from apex_models.config import compose, validate
    from apex_models.data.sources import ingest_sources

    logging.basicConfig(level=logging.WARNING)
    cfg = validate(compose("default")).data.sources.model_dump()
    for name in ("stackexchange", "tldr", "conala", "docs", "repos"):
        cfg[name]["enabled"] = name == "stackexchange"
    cfg["max_records_per_source"] = cap
    started = time.perf_counter()
    report = ingest_sources(cfg, Path(shared), Path(out))
    info = report["sources"]["stackexchange"]
    return {"records": info["read"], "written": info["written"], "seconds": round(time.perf_counter() - started, 1),
            "records_per_s": round(info["read"] / max(info["seconds"], 1e-9), 1), "peak_rss_mb": _peak_rss_mb()}


def main() -> None:
    from apex_models.evaluation.results import write_result

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="64,512", help="dump sizes in MB, comma-separated")
    parser.add_argument("--join-records", type=int, default=5000, help="records converted by the join run")
    parser.add_argument("--chain-records", type=int, default=2000, help="record cap of the full-chain run")
    parser.add_argument("--out", type=Path, default=REPO / "eval" / "results" / "ingest-memory.json")
    args = parser.parse_args()
    sizes = [float(s) for s in args.sizes.split(",") if s.strip()]
    real_shared = Path(os.environ.get("APEX_SHARED", REPO.parent / "shared"))

    results: dict = {"baseline_imports": _in_child(_baseline), "runs": {}}
    for mb in sizes:
        with tempfile.TemporaryDirectory(prefix="bench-ingest-memory-") as tmp:
            shared, dump, size, seconds = synthetic_shared(Path(tmp), real_shared, mb)
            run = {"input_mb": round(size / 2**20, 1), "write_seconds": seconds}
            print(f"{mb:g} MB dump", json.dumps(run), file=sys.stderr)
            for name, fn, fn_args in (("parse", _parse, (str(dump),)), ("join", _join, (str(dump), args.join_records)),
                                      ("chain", _chain, (str(shared), str(Path(tmp) / "out"), args.chain_records))):
                run[name] = _in_child(fn, *fn_args)
                run[name]["peak_rss_over_input"] = round(run[name]["peak_rss_mb"] / run["input_mb"], 4)
                print(f"  {name}", json.dumps(run[name]), file=sys.stderr)
            results["runs"][f"{run['input_mb']:g}MB"] = run
    keys = list(results["runs"])
    if len(keys) >= 2:
        small, large = results["runs"][keys[0]], results["runs"][keys[-1]]
        results["growth"] = {
            "input_ratio": round(large["input_mb"] / small["input_mb"], 2),
            **{f"{name}_peak_rss_ratio": round(large[name]["peak_rss_mb"] / small[name]["peak_rss_mb"], 2)
               for name in ("parse", "join", "chain")}}
    cmd = "python eval/bench_ingest_memory.py " + " ".join(sys.argv[1:])
    write_result(args.out, "ingest peak memory against input size", results, command=cmd.strip(),
                 extra={"sizes_mb": sizes, "join_records": args.join_records, "chain_records": args.chain_records})
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
