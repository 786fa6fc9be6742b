"""Engine ``ray`` gives exactly the records and report counts of engine ``local``.

The only test that starts Ray (a 2-CPU local cluster, about 6 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from apex_models.data.records import read_records
from apex_models.data.sources import SOURCE_ORDER, ingest_sources
from test_data_sources import config, shared  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _counts(report: dict) -> dict:
    """Everything in the report that is a count (timings and the engine name left out)."""
    out = {}
    for name, info in report["sources"].items():
        out[name] = {k: v for k, v in info.items() if k != "seconds"}
    return {"sources": out, "totals": report["totals"]}


def test_ray_engine_equals_local(shared: Path, tmp_path: Path, ray_cluster) -> None:  # noqa: F811
    # Small windows and batches so the records cross several datasets and blocks, as a
    # large corpus would; a licence outside the allowlist exercises the licence filter.
    base = config(ray={"address": None, "num_cpus": 2, "window": 3, "batch_size": 2})
    # The CC-BY-SA-3.0 answer is dropped, on the site and on its mirror.
    base["license_allowlist"] = ["CC-BY-4.0", "CC-BY-SA-4.0"]
    local = ingest_sources({**base, "engine": "local"}, shared, tmp_path / "local", raw_dir=tmp_path / "raw")
    ray_report = ingest_sources({**base, "engine": "ray"}, shared, tmp_path / "ray", raw_dir=tmp_path / "raw")

    assert ray_report["engine"] == "ray" and local["engine"] == "local"
    assert _counts(ray_report) == _counts(local)
    assert local["totals"]["license_excluded"] == 2 and local["totals"]["decontaminated"] == 2
    assert local["totals"]["written"] == 5
    for name in SOURCE_ORDER:
        if not local["sources"][name].get("enabled"):
            continue
        by_local = sorted(read_records(tmp_path / "local" / f"{name}.jsonl"), key=lambda r: r["sha256"])
        by_ray = sorted(read_records(tmp_path / "ray" / f"{name}.jsonl"), key=lambda r: r["sha256"])
        assert by_ray == by_local
        # and in the same stream order, since both keep the first occurrence
        assert (tmp_path / "ray" / f"{name}.jsonl").read_text() == (tmp_path / "local" / f"{name}.jsonl").read_text()
    assert (tmp_path / "ray" / "NOTICE").read_text() == (tmp_path / "local" / "NOTICE").read_text()
    scrubbed = json.dumps(list(read_records(tmp_path / "ray" / "stackexchange.jsonl")))
    assert "<SECRET:github_token>" in scrubbed
