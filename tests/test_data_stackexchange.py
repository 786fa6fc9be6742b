"""Stack Exchange dump reader: streaming, joins, licences, damaged inputs; tldr pages."""

from __future__ import annotations

import io
import tarfile
from html import escape
from pathlib import Path

import pytest

from apex_models.data.records import Skips
from apex_models.data.stackexchange import (html_to_text, iter_posts, qa_pairs, qa_records, site_from_path,
                                            spdx_license)
from apex_models.data.tldr import parse_page, tldr_pairs, tldr_records


def row(**attrs) -> str:
    """One dump row; newlines encoded as the dumps do (&#xA;), else XML turns them into spaces."""
    def attr(v) -> str:
        return escape(str(v), quote=True).replace("\n", "&#xA;")
    return "  <row " + " ".join(f'{k}="{attr(v)}"' for k, v in attrs.items()) + " />\n"


def posts_xml(rows: list[str]) -> str:
    return '<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "".join(rows) + "</posts>\n"


ROWS = [
    row(Id=1, PostTypeId=1, AcceptedAnswerId=3, Score=5, OwnerUserId=10, Title="How do I reverse a list?",
        Body="<p>I have <code>xs</code>:</p><pre><code>xs = [1, 2, 3]\n</code></pre>",
        Tags="<python><list>", ContentLicense="CC BY-SA 3.0"),
    row(Id=2, PostTypeId=2, ParentId=1, Score=9, OwnerUserId=11, Body="<p>Use slicing: <code>xs[::-1]</code></p>",
        ContentLicense="CC BY-SA 4.0"),
    row(Id=3, PostTypeId=2, ParentId=1, Score=4, OwnerUserId=12,
        Body="<p>Call</p><pre><code>xs.reverse()\n    print(xs)\n</code></pre>", ContentLicense="CC BY-SA 3.0"),
    row(Id=4, PostTypeId=2, ParentId=1, Score=1, OwnerUserId=13, Body="<p>low</p>", ContentLicense="CC BY-SA 4.0"),
    row(Id=5, PostTypeId=1, Score=-2, OwnerUserId=14, Title="Downvoted question", Body="<p>x</p>",
        Tags="|misc|", ContentLicense="CC BY-SA 4.0"),
    row(Id=6, PostTypeId=2, ParentId=5, Score=3, OwnerUserId=15, Body="<p>y</p>", ContentLicense="CC BY-SA 4.0"),
    row(Id=7, PostTypeId=1, Score=0, OwnerUserId=16, Title="Unanswered one", Body="<p>?</p>",
        ContentLicense="CC BY-SA 4.0"),
    row(Id=8, PostTypeId=5, Body="tag wiki, not a post we want"),
    # An answer earlier in the file than some questions: joins must not depend on order.
    row(Id=10, PostTypeId=2, ParentId=9, Score=2, OwnerUserId=18, Body="<p>Set <code>PYTHONPATH</code>.</p>",
        ContentLicense="CC BY-SA 4.0"),
    row(Id=9, PostTypeId=1, AcceptedAnswerId=10, Score=1, OwnerUserId=17, Title="Import fails",
        Body="<p>ModuleNotFoundError</p>", Tags="<python>", ContentLicense="CC BY-SA 4.0"),
]


@pytest.fixture()
def dump(tmp_path: Path) -> Path:
    path = tmp_path / "dev.stackexchange.com-Posts.xml"
    path.write_text(posts_xml(ROWS), encoding="utf-8")
    return path


def test_html_to_text_keeps_code() -> None:
    text = html_to_text("<p>Run <code>ls -la</code> then:</p><pre><code>for i in x:\n    print(i)\n</code></pre>"
                        "<ul><li>one</li><li>two</li></ul>")
    assert "Run `ls -la` then:" in text
    assert "```\nfor i in x:\n    print(i)\n```" in text
    assert "- one" in text and "- two" in text
    assert html_to_text("") == ""


def test_iter_posts_streams_rows(dump: Path) -> None:
    rows = list(iter_posts(dump))
    assert [r["Id"] for r in rows] == ["1", "2", "3", "4", "5", "6", "7", "8", "10", "9"]
    assert list(iter_posts(dump.parent)) == []  # a folder without Posts.xml: nothing, no error


def test_qa_records_join_licence_attribution(dump: Path) -> None:
    skips = Skips()
    records = list(qa_records(dump, "dev.stackexchange.com", min_score=0, skips=skips))
    assert [r["question_id"] for r in records] == [1, 9]  # 5 below min_score, 7 unanswered
    first = records[0]
    assert first["accepted_answer_id"] == 3 and first["top_answer_id"] == 2  # best *other* answer
    assert "```\nxs.reverse()\n    print(xs)\n```" in first["accepted_answer"]
    assert first["tags"] == ["python", "list"]
    assert first["license"] == "CC-BY-SA-3.0 AND CC-BY-SA-4.0"
    assert first["attribution"].startswith(
        "dev.stackexchange.com question 1 by user 10, CC BY-SA 3.0, https://dev.stackexchange.com/q/1")
    assert "answer 3 by user 12" in first["attribution"]
    assert first["text"].startswith("How do I reverse a list?") and "xs[::-1]" in first["text"]
    assert records[1]["accepted_answer"] == "Set `PYTHONPATH`."
    assert skips.counts["unanswered"] == 1
    pairs = qa_pairs(records)
    assert pairs[0]["query"] == "How do I reverse a list?" and pairs[0]["package"] == "dev.stackexchange.com"
    all_scores = list(qa_records(dump, "dev.stackexchange.com", min_score=-10))
    assert [r["question_id"] for r in all_scores] == [1, 5, 9]


def test_truncated_xml_keeps_rows_before_the_damage(tmp_path: Path) -> None:
    text = posts_xml(ROWS)
    path = tmp_path / "Posts.xml"
    path.write_text(text[: text.index('<row Id="5"') + 20], encoding="utf-8")
    skips = Skips()
    rows = list(iter_posts(path, skips))
    assert [r["Id"] for r in rows] == ["1", "2", "3", "4"]
    assert skips.counts["malformed_xml"] == 1
    records = list(qa_records(tmp_path, "x.stackexchange.com", skips=Skips()))  # folder input
    assert [r["question_id"] for r in records] == [1]


def test_site_7z_and_bad_7z(tmp_path: Path, dump: Path) -> None:
    py7zr = pytest.importorskip("py7zr")
    archive = tmp_path / "dev.stackexchange.com.7z"
    with py7zr.SevenZipFile(archive, "w") as z:
        z.write(dump, "Posts.xml")
        z.writestr("<users/>", "Users.xml")
    assert site_from_path(archive) == "dev.stackexchange.com"
    assert [r["question_id"] for r in qa_records(archive, "dev.stackexchange.com")] == [1, 9]
    bad = tmp_path / "bad.7z"
    bad.write_bytes(archive.read_bytes()[:40])
    skips = Skips()
    assert list(iter_posts(bad, skips)) == []
    assert skips.counts["bad_archive"] == 1


def test_licence_mapping() -> None:
    assert spdx_license("CC BY-SA 2.5") == "CC-BY-SA-2.5"
    assert spdx_license(None) == "CC-BY-SA-4.0"
    assert site_from_path(Path("cardano.stackexchange.com-Posts.xml")) == "cardano.stackexchange.com"


def test_real_dump(shared_dir: Path) -> None:
    path = shared_dir / "corpora" / "stackexchange" / "genai.stackexchange.com-Posts.xml"
    records = list(qa_records(path, site_from_path(path)))
    assert 100 < len(records) <= 181
    assert all(r["license"].startswith("CC-BY-SA") and r["attribution"] for r in records)


PAGE = """# tar

> Archiving utility.

- [c]reate an archive:

`tar cf {{path/to/target.tar}} {{path/to/file}}`

- List the contents:

`tar tvf {{path/to/source.tar}}`
"""


def make_tldr(path: Path, pages: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in pages.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_tldr_records_and_pairs(tmp_path: Path) -> None:
    assert parse_page(PAGE) == [("[c]reate an archive", "tar cf {{path/to/target.tar}} {{path/to/file}}"),
                                ("List the contents", "tar tvf {{path/to/source.tar}}")]
    tar = make_tldr(tmp_path / "tldr.tar.gz", {"LICENSE.md": b"CC BY 4.0", "pages/common/tar.md": PAGE.encode(),
                                               "pages/linux/bad.md": b"- x:\n\n`\xff\xfe`\n"})
    skips = Skips()
    records = list(tldr_records(tar, skips=skips))
    assert [r["code"] for r in records][0] == "tar cf {{path/to/target.tar}} {{path/to/file}}"
    assert records[0]["attribution"] == "tldr-pages, pages/common/tar.md, CC BY 4.0"
    assert records[0]["license"] == "CC-BY-4.0" and records[0]["platform"] == "common"
    assert skips.counts["not_utf8"] == 1
    assert tldr_pairs(records)[0]["package"] == "tldr:common"
    assert list(tldr_records(tar, platforms=["linux"])) == []


def test_truncated_tldr_archive(tmp_path: Path) -> None:
    pages = {f"pages/common/p{i}.md": (PAGE + "x" * 3000 + str(i)).encode() for i in range(40)}
    good = make_tldr(tmp_path / "good.tar.gz", pages)
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    skips = Skips()
    records = list(tldr_records(bad, skips=skips))
    assert skips.counts["bad_archive"] == 1
    assert 0 < len(records) < 80


def _peak_python_bytes(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_dump(tmp_path: Path, monkeypatch) -> None:
    """Streaming check: a dump 8x larger must not need 8x the memory (Python heap, traced).

    The 200 MB run with peak RSS is eval/bench_ingest.py; this is its small, fast guard.
    """
    from apex_models.data import stackexchange
    from apex_models.data.stackexchange import write_synthetic_dump

    # Insert batches are the reader's only buffers; shrink them below these file sizes so
    # the check sees steady state, as a multi-GB dump would.
    monkeypatch.setattr(stackexchange, "_BATCH", 100)
    monkeypatch.setattr(stackexchange, "_TEXT_BATCH", 50)

    small, large = tmp_path / "small.xml", tmp_path / "large.xml"
    write_synthetic_dump(small, 100, body_words=20)
    write_synthetic_dump(large, 800, body_words=20)

    def parse(path: Path):
        return lambda: sum(1 for _ in iter_posts(path))

    def join(path: Path):
        return lambda: sum(1 for _ in qa_records(path, "s.example"))

    join(small)()  # warm-up: first-use imports and caches are not the reader's memory
    assert _peak_python_bytes(parse(large)) < 2 * _peak_python_bytes(parse(small)) + 200_000
    assert _peak_python_bytes(join(large)) < 2 * _peak_python_bytes(join(small)) + 500_000


def test_binary_and_non_utf8_dumps_are_counted_not_raised(tmp_path: Path) -> None:
    binary = tmp_path / "bin.stackexchange.com-Posts.xml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00" * 100)
    latin = tmp_path / "latin.stackexchange.com-Posts.xml"
    latin.write_bytes(posts_xml(ROWS[:2]).replace("reverse", "r\xe9verse").encode("latin-1"))  # declared utf-8
    skips = Skips()
    assert list(qa_records(binary, "bin.stackexchange.com", skips=skips)) == []
    assert list(iter_posts(latin, skips)) == []
    assert skips.counts["malformed_xml"] == 2
