"""Docs and changelogs inside sdists, read from the archive; a damaged sdist is counted, not raised."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from apex_models.data.records import Skips, read_records
from apex_models.data.sdist_docs import find_sdist, sdist_doc_records
from apex_models.data.sources import ingest_sources
from test_data_sources import config

PKG_INFO = "Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.2.0\nLicense-Expression: MIT\n\nA demo.\n"
README = "# demo-pkg\n\nDemo does one thing well: it turns configuration files into validated settings objects.\n"
GUIDE = ("Installing\n==========\n\nInstall demo with pip, then create a settings file in your project folder "
         "and point the DEMO_SETTINGS environment variable at it.\n")
CHANGES = "Changelog\n=========\n\n1.2.0\n-----\n\n- Add TOML support.\n- Drop Python 3.8.\n\n1.1.0\n-----\n\n- Fix a crash\n  on empty files.\n"


def make_sdist(path: Path, extra: dict[str, bytes] | None = None, link: bool = True) -> Path:
    files = {"demo_pkg-1.2.0/PKG-INFO": PKG_INFO.encode(), "demo_pkg-1.2.0/README.md": README.encode(),
             "demo_pkg-1.2.0/docs/install.rst": GUIDE.encode(), "demo_pkg-1.2.0/CHANGES.rst": CHANGES.encode(),
             "demo_pkg-1.2.0/demo_pkg/__init__.py": b"x = 1\n", "demo_pkg-1.2.0/docs/_static/theme.html": b"<p>skip</p>",
             "demo_pkg-1.2.0/docs/logo.md": b"\x89PNG\x00\x00" * 10, "demo_pkg-1.2.0/docs/old.txt": "caf\xe9".encode("latin-1"),
             **(extra or {})}
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo("demo_pkg-1.2.0/docs/loop.rst")
            info.type, info.linkname = tarfile.SYMTYPE, "loop.rst"
            tf.addfile(info)
    return path


def test_sdist_docs_and_changelog(tmp_path: Path) -> None:
    archive = make_sdist(tmp_path / "demo_pkg-1.2.0.tar.gz")
    assert find_sdist("demo-pkg==1.2.0", tmp_path) == archive and find_sdist("demo-pkg==9.9", tmp_path) is None
    skips = Skips()
    records = list(sdist_doc_records(archive, 100_000, 40, skips))
    docs = [r for r in records if r["kind"] == "doc"]
    logs = [r for r in records if r["kind"] == "changelog"]
    assert [(r["path"], r["heading_path"]) for r in docs] == [("demo-pkg/README.md", ["demo-pkg"]),
                                                              ("demo-pkg/docs/install.rst", ["Installing"])]
    assert [(r["version"], r["changes"]) for r in logs] == [("1.2.0", ["Add TOML support.", "Drop Python 3.8."]),
                                                            ("1.1.0", ["Fix a crash on empty files."])]
    assert {r["license"] for r in records} == {"MIT"}
    assert records[0]["attribution"] == "demo-pkg 1.2.0 (sdist from PyPI), MIT"
    assert dict(skips.counts) == {"binary": 1, "not_utf8": 1, "symlink": 1}


def test_truncated_and_unlicensed_sdists(tmp_path: Path) -> None:
    big = {"demo_pkg-1.2.0/docs/big.md": b"# Big\n\n" + b"word " * 40_000}
    good = make_sdist(tmp_path / "demo_pkg-1.2.0.tar.gz", big, link=False)
    cut = tmp_path / "cut" / "demo_pkg-1.2.0.tar.gz"
    cut.parent.mkdir()
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    skips = Skips()
    list(sdist_doc_records(cut, 100_000, 40, skips))
    assert skips.counts["bad_archive"] == 1
    nolicence = tmp_path / "nolic" / "demo_pkg-1.2.0.tar.gz"
    nolicence.parent.mkdir()
    make_sdist(nolicence, {"demo_pkg-1.2.0/PKG-INFO": PKG_INFO.replace("License-Expression: MIT\n", "").encode()})
    skips = Skips()
    assert list(sdist_doc_records(nolicence, 100_000, 40, skips)) == [] and skips.counts == {"unknown_license": 1}
    skips = Skips()
    list(sdist_doc_records(good, 100_000, 40, skips))
    assert skips.counts["too_large"] == 1


def test_stage_reads_cached_sdists(tmp_path: Path) -> None:
    """The docs source with an sdist already in data/raw/sdist: no apt, no pip, no network."""
    raw = tmp_path / "raw" / "debian"
    (raw.parent / "sdist").mkdir(parents=True)
    make_sdist(raw.parent / "sdist" / "demo_pkg-1.2.0.tar.gz")
    cfg = config(stackexchange={"enabled": False}, tldr={"enabled": False}, conala={"enabled": False},
                 docs={"enabled": True, "debian_packages": [], "sdist_packages": ["demo-pkg==1.2.0"]})
    report = ingest_sources(cfg, tmp_path / "no-shared", tmp_path / "out", raw_dir=raw)
    info = report["sources"]["docs"]
    assert info["written"] == 4 and info["licenses"] == {"MIT": 4}
    assert info["skipped"]["counts"] == {"binary": 1, "not_utf8": 1, "symlink": 1}
    kinds = [r["kind"] for r in read_records(tmp_path / "out" / "docs.jsonl")]
    assert kinds == ["doc", "doc", "changelog", "changelog"]
