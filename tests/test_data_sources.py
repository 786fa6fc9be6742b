"""The ingest_sources stage end to end on small offline fixtures, damaged inputs included."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from apex_models.config import compose, validate
from apex_models.data import sources as sources_mod
from apex_models.data.records import read_records
from apex_models.data.sources import ingest_sources
from test_data_stackexchange import PAGE, ROWS, make_tldr, posts_xml, row

GH = "ghp_" + "R4nd0mT0k3nV4lu3" + "xYzAbCdEfGhIjKlMn0pQ"


def config(**overrides) -> dict:
    cfg = validate(compose("tiny")).data.sources.model_dump()
    cfg["max_records_per_source"] = None
    cfg["tldr"]["platforms"] = None
    for key, value in overrides.items():
        cfg[key] = {**cfg[key], **value} if isinstance(value, dict) else value
    return cfg


@pytest.fixture()
def shared(tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    se = root / "corpora" / "stackexchange"
    se.mkdir(parents=True)
    leak = row(Id=20, PostTypeId=1, AcceptedAnswerId=21, Score=3, OwnerUserId=30, Title="Push to GitHub from CI",
               Body="<p>My CI fails to push.</p>", Tags="<git>", ContentLicense="CC BY-SA 4.0")
    leak_answer = row(Id=21, PostTypeId=2, ParentId=20, Score=5, OwnerUserId=31,
                      Body=f"<pre><code>git remote set-url origin https://{GH}@github.com/me/app.git\n</code></pre>"
                           "<p>Ask ops@corp-mail.net if it fails.</p>", ContentLicense="CC BY-SA 4.0")
    bench_title = row(Id=22, PostTypeId=1, AcceptedAnswerId=23, Score=3, OwnerUserId=32,
                      Title="Benchmark question that must never be trained on", Body="<p>b</p>",
                      ContentLicense="CC BY-SA 4.0")
    bench_answer = row(Id=23, PostTypeId=2, ParentId=22, Score=1, OwnerUserId=33, Body="<p>c</p>",
                       ContentLicense="CC BY-SA 4.0")
    (se / "dev.stackexchange.com-Posts.xml").write_text(posts_xml(ROWS + [leak, leak_answer, bench_title, bench_answer]))
    # The same site mirrored, cut in the middle: its rows are duplicates, its damage is counted.
    mirror = posts_xml(ROWS)
    (se / "mirror.stackexchange.com-Posts.xml").write_text(mirror[: mirror.index('<row Id="9"') + 30])
    tldr = root / "corpora" / "tldr"
    tldr.mkdir(parents=True)
    make_tldr(tldr / "tldr-pages-en.tar.gz", {"pages/common/tar.md": PAGE.encode(),
                                              "pages/linux/tar.md": PAGE.encode()})
    conala = root / "corpora" / "conala"
    conala.mkdir(parents=True)
    (conala / "conala-train.json").write_text(json.dumps([
        {"intent": "reverse list `xs`", "rewritten_intent": None, "snippet": "xs[::-1]", "question_id": 1},
        {"intent": "sort a dict by value", "rewritten_intent": None, "snippet": "sorted(d.items(), key=lambda kv: kv[1])",
         "question_id": 2}]))
    bench = root / "benchmarks" / "conala"
    bench.mkdir(parents=True)
    (bench / "conala-test.json").write_text(json.dumps([
        {"intent": "Benchmark question that must never be trained on", "snippet": "sorted(d.items(), key=lambda kv: kv[1])"}]))
    return root


def test_ingest_sources_end_to_end(shared: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = ingest_sources(config(), shared, out, raw_dir=tmp_path / "raw")
    se = list(read_records(out / "stackexchange.jsonl"))
    titles = [r["title"] for r in se]
    assert titles == ["How do I reverse a list?", "Import fails", "Push to GitHub from CI"]
    leak = se[-1]
    assert GH not in json.dumps(se) and "<SECRET:github_token>" in leak["text"] and "<PII:email>" in leak["text"]
    info = report["sources"]["stackexchange"]
    assert info["scrub"] == {"email": 1, "github_token": 1}
    assert info["decontaminated"] == {"exact-query": 1}
    assert info["skipped"]["counts"]["malformed_xml"] == 1
    assert info["dedup"]["exact_duplicates"] == 1 and info["licenses"] == {"CC-BY-SA-3.0 AND CC-BY-SA-4.0": 1,
                                                                              "CC-BY-SA-4.0": 2}
    conala = list(read_records(out / "conala.jsonl"))
    assert [r["query"] for r in conala] == ["reverse list `xs`"]  # the other is a benchmark snippet
    assert report["sources"]["conala"]["decontaminated"] == {"exact-code": 1}
    tldr = report["sources"]["tldr"]
    assert tldr["written"] == 2 and tldr["dedup"]["exact_duplicates"] == 2  # linux copies the common page
    assert report["sources"]["docs"] == {"enabled": False}
    notice = (out / "NOTICE").read_text()
    assert "dev.stackexchange.com question 1 by user 10" in notice and "tldr-pages, pages/common/tar.md" in notice
    card = (out / "README.md").read_text()
    assert card.startswith("# Text corpora")
    assert "| stackexchange | 3 | 5 | 0 | 1 | 1 (25.00%) | 0 (0.00%) | 3 |" in card
    assert "| stackexchange | email 1, github_token 1 | exact-query 1 | malformed_xml 1, unanswered 2 |" in card
    assert json.loads((out / "report.json").read_text())["totals"]["written"] == 6
    for record in se + conala:
        assert {"text", "kind", "source", "url", "path", "license", "attribution", "sha256", "language"} <= set(record)


def test_docs_source_with_bad_files(shared: Path, tmp_path: Path, monkeypatch) -> None:
    tree = tmp_path / "deb" / "extracted"
    doc = tree / "usr" / "share" / "doc" / "pkg-doc"
    doc.mkdir(parents=True)
    (doc / "guide.md").write_text("# Guide\n\n" + "Configure the tool with a file in your home folder. " * 4)
    (doc / "binary.html").write_bytes(b"\x00\x01\x02" * 100)
    (doc / "latin.txt").write_bytes("na\xefve ".encode("latin-1") * 30)
    (doc / "huge.rst").write_text("y" * 3_000_000)
    os.symlink(doc, doc / "loop")
    calls = []
    monkeypatch.setattr(sources_mod, "fetch_debian_doc", lambda pkg, dest: calls.append(pkg) or (tree if pkg == "pkg-doc" else None))
    cfg = config(stackexchange={"enabled": False}, tldr={"enabled": False}, conala={"enabled": False},
                 docs={"enabled": True, "debian_packages": ["pkg-doc", "gone-doc", "nolicence-doc"],
                       "package_licenses": {"pkg-doc": "MIT", "gone-doc": "MIT"}})
    report = ingest_sources(cfg, shared, tmp_path / "out", raw_dir=tmp_path / "raw")
    docs = report["sources"]["docs"]
    assert calls == ["pkg-doc", "gone-doc"]
    assert docs["written"] == 1 and docs["licenses"] == {"MIT": 1}
    assert docs["skipped"]["counts"] == {"binary": 1, "not_utf8": 1, "too_large": 1, "symlink": 1,
                                         "fetch_failed": 1, "unknown_license": 1}
    (record,) = read_records(tmp_path / "out" / "docs.jsonl")
    assert record["heading_path"] == ["Guide"] and record["attribution"] == "pkg-doc (Debian package), MIT"


def test_missing_shared_is_a_warning(tmp_path: Path) -> None:
    report = ingest_sources(config(), tmp_path / "nowhere", tmp_path / "out")
    assert report["shared_found"] is False and report["totals"]["written"] == 0
    for name in ("stackexchange", "conala", "tldr"):
        assert (tmp_path / "out" / f"{name}.jsonl").read_text() == ""
        assert report["sources"][name]["skipped"]["counts"] == {"no_input": 1}


def test_record_cap_and_tiny_profile() -> None:
    tiny = validate(compose("tiny")).data.sources
    default = validate(compose("default")).data.sources
    assert tiny.max_records_per_source and default.max_records_per_source is None
    assert tiny.docs.enabled is False  # the tiny DAG never reaches apt
    assert default.docs.enabled is True and default.docs.package_licenses["python3.11-doc"] == "PSF-2.0"
    assert default.engine == "local" and "CC-BY-SA-*" in default.license_allowlist


def test_real_shared_sources_small(shared_dir: Path, tmp_path: Path) -> None:
    cfg = config(max_records_per_source=40, tldr={"platforms": ["linux"]})
    report = ingest_sources(cfg, shared_dir, tmp_path / "out", benchmarks=["conala"])
    for name in ("stackexchange", "conala", "tldr"):
        assert report["sources"][name]["written"] > 20


def test_bad_inputs_never_stop_the_stage(shared: Path, tmp_path: Path) -> None:
    """Each damaged input is skipped with its reason in the stage report; the good ones still land."""
    py7zr = pytest.importorskip("py7zr")
    se = shared / "corpora" / "stackexchange"
    archive = tmp_path / "whole.7z"
    with py7zr.SevenZipFile(archive, "w") as z:
        z.writestr(posts_xml(ROWS), "Posts.xml")
    (se / "cut.stackexchange.com.7z").write_bytes(archive.read_bytes()[:60])           # truncated .7z
    (se / "png.stackexchange.com-Posts.xml").write_bytes(b"\x89PNG\r\n\x1a\n\x00" * 50)  # binary
    (se / "latin.stackexchange.com-Posts.xml").write_bytes(                             # not UTF-8
        posts_xml(ROWS[:2]).replace("reverse", "r\xe9verse").encode("latin-1"))
    loop = se / "loop.stackexchange.com"
    loop.mkdir()
    os.symlink(loop / "Posts.xml", loop / "Posts.xml")                                  # a symlink loop
    tldr = shared / "corpora" / "tldr" / "tldr-pages-en.tar.gz"
    pages = {f"pages/common/p{i}.md": (PAGE.replace("tar", f"tar{i}") + "x" * 3000).encode() for i in range(40)}
    make_tldr(tldr, pages)
    tldr.write_bytes(tldr.read_bytes()[: tldr.stat().st_size // 2])                    # truncated .tar.gz

    report = ingest_sources(config(), shared, tmp_path / "out", raw_dir=tmp_path / "raw")
    se_info, tldr_info = report["sources"]["stackexchange"], report["sources"]["tldr"]
    assert se_info["written"] == 3  # the good dump's records, as without the damaged neighbours
    assert se_info["skipped"]["counts"]["bad_archive"] == 1
    assert se_info["skipped"]["counts"]["malformed_xml"] == 1 + 2  # the cut mirror, the binary, the latin-1 file
    reasons = {e["input"]: e["reason"] for e in se_info["skipped"]["examples"]}
    assert reasons["cut.stackexchange.com.7z"] == "bad_archive"
    assert reasons["loop.stackexchange.com"] == "symlink_loop" and se_info["skipped"]["counts"]["symlink_loop"] == 1
    assert report["totals"]["skipped"]["bad_archive"] == 2  # and the tldr archive
    assert tldr_info["skipped"]["counts"]["bad_archive"] == 1 and 0 < tldr_info["written"] < 40
    assert json.loads((tmp_path / "out" / "report.json").read_text())["totals"] == report["totals"]
