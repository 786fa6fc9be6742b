"""PyPI ingestion on fixture wheels already in raw_dir (no network), plus one slow real download."""

from __future__ import annotations

import json
import os
import tarfile
import zipfile
from collections import Counter

import pytest

from _data_fixtures import make_wheel
from apex_models.data.pypi import (download_distributions, ingest_pypi_code, iter_python_files,
                                   read_distribution_metadata)

ALLOW = ["MIT", "BSD-3-Clause", "Apache-2.0"]


def test_iter_python_files_filters(tmp_path):
    wheel = make_wheel(tmp_path / "raw")
    skipped = Counter()
    paths = [p for p, _ in iter_python_files(wheel, max_file_bytes=10_000, skipped=skipped)]
    assert paths == ["fixturepkg/__init__.py", "fixturepkg/core.py", "fixturepkg/latin1.py"]
    assert skipped["test"] == 1
    small = [p for p, _ in iter_python_files(wheel, max_file_bytes=100)]
    assert "fixturepkg/core.py" not in small


def test_iter_python_files_sdist_and_corrupt(tmp_path):
    src = tmp_path / "pkg-1.0"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: pkg\nVersion: 1.0\nLicense: MIT\n")
    sdist = tmp_path / "pkg-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tf:
        tf.add(src, arcname="pkg-1.0")
    assert [p for p, _ in iter_python_files(sdist, 1000)] == ["pkg-1.0/pkg/mod.py"]
    name, version, meta, _ = read_distribution_metadata(sdist)
    assert (name, version) == ("pkg", "1.0") and "License: MIT" in meta

    bad = tmp_path / "bad-1.0-py3-none-any.whl"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    skipped = Counter()
    assert list(iter_python_files(bad, 1000, skipped)) == []
    assert skipped["corrupt_archive"] == 1


def test_read_metadata_wheel(tmp_path):
    wheel = make_wheel(tmp_path)
    name, version, meta, licenses = read_distribution_metadata(wheel)
    assert (name, version) == ("fixturepkg", "1.0")
    assert "MIT License" in meta


def test_ingest_offline_mit_kept_gpl_excluded(tmp_path):
    raw = tmp_path / "raw"
    make_wheel(raw)
    make_wheel(raw, name="gplpkg", version="0.1",
               classifier="License :: OSI Approved :: GNU General Public License v3 (GPLv3)")
    out = tmp_path / "files.jsonl"
    report = ingest_pypi_code(["fixturepkg==1.0", "gplpkg==0.1"], raw, out, ALLOW,
                              max_files_per_package=10, max_file_bytes=100_000)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["path"] for r in records] == ["fixturepkg/__init__.py", "fixturepkg/core.py"]
    rec = records[1]
    assert rec["license"] == "MIT" and rec["package"] == "fixturepkg" and rec["version"] == "1.0"
    assert rec["kind"] == "code" and rec["language"] == "python" and rec["source"] == "pypi"
    assert rec["attribution"] == "fixturepkg 1.0, MIT, from PyPI"
    assert rec["url"] == "https://pypi.org/project/fixturepkg/1.0/"
    import hashlib
    assert rec["sha256"] == hashlib.sha256(rec["text"].encode()).hexdigest()
    assert report["excluded"] == {"gplpkg": "GPL-3.0-only"}
    pkg = report["packages"]["fixturepkg"]
    assert pkg["files_kept"] == 2 and pkg["skipped"] == {"not_utf8": 1, "test": 1}
    assert report["totals"]["files_kept"] == 2 and report["failed"] == {}


def test_ingest_cap_is_deterministic(tmp_path):
    raw = tmp_path / "raw"
    modules = {f"capped/m{i:02d}.py": f"x = {i}\n" for i in range(20)}
    make_wheel(raw, name="capped", modules=modules)
    kept = []
    for run in range(2):
        out = tmp_path / f"files{run}.jsonl"
        report = ingest_pypi_code(["capped==1.0"], raw, out, ALLOW, max_files_per_package=5,
                                  max_file_bytes=1000)
        kept.append([json.loads(line)["path"] for line in out.read_text().splitlines()])
        assert report["packages"]["capped"]["skipped"] == {"over_cap": 15}
    assert kept[0] == kept[1] and len(kept[0]) == 5 and kept[0] == sorted(kept[0])


def test_failed_spec_is_recorded_not_raised(tmp_path, monkeypatch):
    # No index at all: pip fails at once instead of retrying a network it may not have.
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    archives, failures = download_distributions(["fixturepkg==1.0"], tmp_path / "empty",
                                                index_url=(tmp_path / "no-index").as_uri())
    assert archives == [] and "fixturepkg==1.0" in failures


@pytest.mark.slow
def test_real_download_six(tmp_path):
    archives, failures = download_distributions(["six==1.16.0"], tmp_path / "raw")
    assert failures == {} and len(archives) == 1
    out = tmp_path / "files.jsonl"
    report = ingest_pypi_code(["six==1.16.0"], tmp_path / "raw", out, ALLOW, 50, 400_000)
    assert report["packages"]["six"]["license"] == "MIT"
    assert report["totals"]["files_kept"] >= 1
