"""Documentation splitting, the safe tree walk, dedup and the record files."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from apex_models.data.dedup import Deduplicator, DedupStats, dedup_records
from apex_models.data.docs import doc_records, fetch_debian_doc, split_markdown, split_rst, split_sphinx_html
from apex_models.data.records import RECORD_FIELDS, Skips, make_record, read_records, text_sha256, write_records

MD = """Intro line.

# Install

Run this:

```bash
# not a heading
pip install apex
```

## From source

Clone it.

Usage
-----

Call it.
"""

RST = """=====
Title
=====

Preamble.

Section A
=========

Text A.

Sub A1
------

Text A1.

Section B
=========

Text B::

    code block
    ----------
"""

SPHINX = """<html><head><title>json</title></head><body>
<div class="sphinxsidebar">navigation to drop</div>
<div class="body" role="main">
<section id="json"><h1>json — JSON<a class="headerlink" href="#json">¶</a></h1>
<p>Encode <code>obj</code>.</p>
<div class="highlight"><pre><span>&gt;&gt;&gt; </span>json.dumps([1, 2])
'[1, 2]'
</pre></div>
<section id="usage"><h2>Basic Usage<a class="headerlink" href="#usage">¶</a></h2><p>Use <em>dump</em>.</p>
<div class="section" id="deep"><h3>Deeper</h3><p>Old-style div section.</p></div>
</section></section>
</div></body></html>"""


def test_split_markdown() -> None:
    sections = split_markdown(MD)
    assert [p for p, _ in sections] == [(), ("Install",), ("Install", "From source"), ("Install", "Usage")]
    assert "# not a heading" in sections[1][1] and "```bash" in sections[1][1]


def test_split_rst() -> None:
    sections = split_rst(RST)
    assert [p for p, _ in sections] == [("Title",), ("Title", "Section A"), ("Title", "Section A", "Sub A1"),
                                       ("Title", "Section B")]
    assert "code block\n    ----------" in sections[-1][1]  # indented: not a heading


def test_split_sphinx_html() -> None:
    sections = split_sphinx_html(SPHINX)
    assert [p for p, _ in sections] == [("json — JSON",), ("json — JSON", "Basic Usage"),
                                       ("json — JSON", "Basic Usage", "Deeper")]
    first = sections[0][1]
    assert "Encode `obj`." in first and "```\n>>> json.dumps([1, 2])\n'[1, 2]'\n```" in first
    assert "navigation" not in " ".join(t for _, t in sections) and "¶" not in first
    assert sections[2][1] == "Old-style div section."


def test_doc_records_skip_bad_files_and_loops(tmp_path: Path) -> None:
    root = tmp_path / "doc"
    (root / "guide").mkdir(parents=True)
    (root / "_sources").mkdir()
    (root / "guide" / "index.md").write_text("# Guide\n\n" + "Real prose about the tool. " * 10)
    (root / "_sources" / "index.rst.txt").write_text("duplicate of the HTML " * 10)
    (root / "guide" / "page.html").write_text(SPHINX.replace("Encode", "Encode " + "words " * 20))
    (root / "blob.txt").write_bytes(b"\x7fELF\x00\x00binary" * 10)
    (root / "latin1.rst").write_bytes("Caf\xe9 cr\xe8me ".encode("latin-1") * 20)
    (root / "huge.md").write_text("x" * 5000)
    os.symlink(root, root / "guide" / "loop")  # a directory link back to the root
    os.symlink(root / "guide" / "index.md", root / "link.md")
    skips = Skips()
    records = list(doc_records(root, "fixture-doc", "MIT", "fixture docs, MIT", max_file_bytes=4000, skips=skips))
    paths = Counter(r["path"] for r in records)
    assert set(paths) == {"guide/index.md", "guide/page.html"}
    assert skips.counts == {"binary": 1, "not_utf8": 1, "too_large": 1, "symlink": 2}
    rec = next(r for r in records if r["path"] == "guide/index.md")
    assert rec["heading_path"] == ["Guide"] and rec["text"].startswith("Guide\n\nReal prose")
    assert rec["license"] == "MIT" and rec["source"] == "docs" and rec["doc_source"] == "fixture-doc"
    assert list(doc_records(tmp_path / "absent", "x", "MIT", "x")) == []


def test_fetch_debian_doc_never_raises(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert fetch_debian_doc("python3.11-doc", tmp_path) is None


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_fetch_debian_doc_unpacks_without_symlinks(tmp_path: Path) -> None:
    """Doc packages link to other packages' files (absent here); DVC cannot hash a dangling
    link in the stage output, so none survives unpacking."""
    import subprocess

    pkg = tmp_path / "pkg"
    html = pkg / "usr/share/doc/fixture/html"
    (html / "_static").mkdir(parents=True)
    (pkg / "DEBIAN").mkdir()
    (pkg / "DEBIAN/control").write_text("Package: fixture-doc\nVersion: 1.0\nArchitecture: all\n"
                                        "Maintainer: t <t@example.org>\nDescription: fixture\n")
    (html / "index.html").write_text("<html><body><h1>Fixture</h1><p>Real prose here.</p></body></html>")
    (html / "_static/jquery.js").symlink_to("/usr/share/javascript/nowhere/jquery.js")  # dangling
    (pkg / "usr/share/doc/fixture-doc").symlink_to("fixture")                          # a folder link
    dest = tmp_path / "debian"
    dest.mkdir()
    subprocess.run(["dpkg-deb", "--build", str(pkg), str(dest / "fixture-doc_1.0_all.deb")], check=True,
                   capture_output=True)
    out = fetch_debian_doc("fixture-doc", dest)  # reuses the .deb in dest: no apt, no network
    assert out is not None and (out / "usr/share/doc/fixture/html/index.html").is_file()
    assert [p for p in out.rglob("*") if p.is_symlink()] == []
    assert not (out / "usr/share/doc/fixture-doc").exists()


def test_records_roundtrip_atomic(tmp_path: Path) -> None:
    rec = make_record("hello", kind="doc", source="docs", license="MIT", attribution="a", extra=1)
    assert list(rec)[:len(RECORD_FIELDS)] == list(RECORD_FIELDS) and rec["sha256"] == text_sha256("hello")
    out = tmp_path / "r.jsonl"
    assert write_records(iter([rec, rec]), out) == 2
    assert list(read_records(out)) == [rec, rec]
    with pytest.raises(RuntimeError):
        write_records((_ for _ in ()).throw(RuntimeError("boom")), out)
    assert list(read_records(out)) == [rec, rec]  # the earlier file survives a failed write
    assert not (tmp_path / "r.jsonl.tmp").exists()
    out.write_text(json.dumps(rec) + "\n{not json\n")
    bad: Counter = Counter()
    assert len(list(read_records(out, bad))) == 1 and bad["malformed_jsonl_line"] == 1


def test_dedup_exact_and_near_first_kept() -> None:
    base = "how do I reverse a list in python without copying it, using the slice syntax or reversed"
    records = [{"text": base, "id": 0}, {"text": base.upper() + "  ", "id": 1},
               {"text": base + " please", "id": 2}, {"text": "a completely different question about sql joins", "id": 3}]
    kept, stats = dedup_records(records, threshold=0.8)
    assert [r["id"] for r in kept] == [0, 3]
    assert stats["exact_duplicates"] == 1 and stats["near_duplicates"] == 1 and stats["exact_rate"] == 0.25
    # deterministic, and one instance spans sources
    dd = Deduplicator(threshold=0.8)
    s1, s2 = DedupStats(), DedupStats()
    assert len(list(dd.filter(records[:1], s1))) == 1
    assert list(dd.filter(records[1:], s2)) == [records[3]] and s2.as_dict()["seen"] == 3
