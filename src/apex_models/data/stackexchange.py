"""Stack Exchange data dumps -> joined question/answer records, streamed.

A site dump is ``Posts.xml`` (one ``<row>`` per post; PostTypeId 1 = question, 2 =
answer; ``Body`` is HTML; ``AcceptedAnswerId`` links a question to its accepted answer),
shipped as a folder or a ``.7z`` archive. Stack Overflow's is about 100 GB, so nothing
here reads a whole file: rows are parsed with ``iterparse`` and cleared as they go.

Joining a question with its answers needs to see the answers, which come later in the
file (and sometimes much later: old questions get new answers). :func:`qa_records`
therefore reads the file twice and keeps texts on disk, not in memory:

1. pass 1 keeps only integers per post (question id, accepted answer id, score; answer
   id, parent id, score) in a temporary SQLite file, and picks in SQL each question's
   best-scored other answer;
2. pass 2 stores the text of the questions worth keeping and of the answers selected in
   pass 1 in the same SQLite file;
3. the join is a SQL query that yields one question at a time.

Memory stays bounded by SQLite's page cache whatever the dump's size; the price is temp
disk of about the selected texts (less than the dump) and a second parse (parsing is
cheaper than the HTML-to-text conversion that dominates anyway).
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import tempfile
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from apex_models.data.code_pairs import pair_sha256
from apex_models.data.records import Skips, make_record

log = logging.getLogger(__name__)

_LICENSES = {
    "CC BY-SA 4.0": "CC-BY-SA-4.0",
    "CC BY-SA 3.0": "CC-BY-SA-3.0",
    "CC BY-SA 2.5": "CC-BY-SA-2.5",
}
_HUMAN_LICENSES = {v: k for k, v in _LICENSES.items()}
DEFAULT_LICENSE = "CC-BY-SA-4.0"  # dumps before 2018 have no ContentLicense column


def spdx_license(content_license: str | None) -> str:
    """SPDX id of a row's ``ContentLicense`` ("CC BY-SA 4.0" -> "CC-BY-SA-4.0")."""
    if not content_license:
        return DEFAULT_LICENSE
    value = " ".join(content_license.split())
    return _LICENSES.get(value, value.replace(" ", "-"))


def site_from_path(path: Path) -> str:
    """``cardano.stackexchange.com-Posts.xml`` / ``cardano.stackexchange.com.7z`` -> the site."""
    name = Path(path).name
    for suffix in ("-Posts.xml", "_Posts.xml", ".7z", ".xml"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return name if name and name != "Posts" else Path(path).parent.name


@contextmanager
def _posts_file(source: Path, skips: Skips):
    """The Posts.xml path for a file, a folder or a site .7z (extracted to a temp dir)."""
    source = Path(source)
    if source.is_dir():
        candidate = source / "Posts.xml"
        if not candidate.is_file():
            skips.add("no_posts_xml", source.name)
            yield None
        else:
            yield candidate
        return
    if source.suffix == ".7z":
        import py7zr

        with tempfile.TemporaryDirectory(prefix="se-7z-") as tmp:
            try:
                with py7zr.SevenZipFile(source, mode="r") as archive:
                    names = [n for n in archive.getnames() if Path(n).name == "Posts.xml"]
                    if not names:
                        skips.add("no_posts_xml", source.name)
                        yield None
                        return
                    # Extract the one member to disk (py7zr decompresses in chunks).
                    archive.extract(path=tmp, targets=names[:1])
            except Exception as exc:  # py7zr raises many types for damaged archives
                skips.add("bad_archive", source.name, f"{type(exc).__name__}: {exc}")
                yield None
                return
            extracted = Path(tmp) / names[0]
            if not extracted.is_file():
                skips.add("bad_archive", source.name, "Posts.xml not extracted")
                yield None
                return
            yield extracted
        return
    if not source.is_file():
        skips.add("missing", source.name)
        yield None
        return
    yield source


def iter_posts(source: Path, skips: Skips | None = None) -> Iterator[dict[str, str]]:
    """Stream every ``<row>`` of a Posts.xml (file, folder or .7z) as a dict of its attributes.

    Bounded memory: each element is cleared after it is read and the root drops its
    children, so the tree never grows. Malformed XML stops this file with the error
    counted in `skips` (``malformed_xml``); rows read before it have been yielded.
    """
    skips = skips if skips is not None else Skips()
    with _posts_file(Path(source), skips) as path:
        if path is None:
            return
        root = None
        try:
            for event, elem in ET.iterparse(path, events=("start", "end")):
                if event == "start":
                    if root is None:
                        root = elem
                    continue
                if elem.tag == "row":
                    yield dict(elem.attrib)
                    elem.clear()
                    if root is not None:
                        root.clear()
        except ET.ParseError as exc:
            skips.add("malformed_xml", Path(source).name, str(exc))
        except OSError as exc:
            skips.add("unreadable", Path(source).name, str(exc))


_BLOCKS = ("p", "div", "li", "ul", "ol", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6",
           "table", "tr", "dl", "dt", "dd", "section", "hr")


def rewrite_html_tree(soup) -> None:
    """In place: ``<pre>`` -> fenced code, ``<code>`` -> backticks, list dashes, block breaks.

    Shared by :func:`html_to_text` and the Sphinx splitter (which rewrites a whole page
    once, then reads each section's text, instead of re-parsing every section).
    """
    from bs4 import NavigableString

    for tag in soup.find_all(["script", "style"]):
        tag.decompose()
    for pre in soup.find_all("pre"):
        code = pre.get_text().strip("\n")
        pre.replace_with(NavigableString(f"\n\n```\n{code}\n```\n\n"))
    for code in soup.find_all("code"):
        inner = code.get_text()
        code.replace_with(NavigableString(f"`{inner}`" if inner.strip() else inner))
    for br in soup.find_all("br"):
        br.replace_with(NavigableString("\n"))
    for li in soup.find_all("li"):
        li.insert(0, NavigableString("- "))
    for tag in soup.find_all(_BLOCKS):
        tag.insert_after(NavigableString("\n\n"))


def tidy_text(text: str) -> str:
    """Collapse runs of blank lines and trailing spaces, never touching fenced code."""
    parts = re.split(r"(\n```\n[\s\S]*?\n```\n)", text)
    out = []
    for i, part in enumerate(parts):
        if i % 2 == 1:
            out.append(part)
        else:
            part = re.sub(r"[ \t]+\n", "\n", part)
            out.append(re.sub(r"\n{3,}", "\n\n", part))
    return re.sub(r"\n{3,}", "\n\n", "".join(out)).strip()


def html_to_text(html: str) -> str:
    """Readable text from an HTML fragment, code kept verbatim.

    ``<pre>`` blocks become fenced code (they hold the commands and snippets the models
    must learn from, whitespace intact), inline ``<code>`` becomes backticks, list items
    get a dash, and block elements are separated by blank lines.
    """
    if not html or not html.strip():
        return ""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "lxml")
    rewrite_html_tree(soup)
    return tidy_text(soup.get_text())


def _tags(value: str | None) -> list[str]:
    """``<python><pandas>`` (old dumps) or ``|python|pandas|`` (new dumps) -> a list."""
    if not value:
        return []
    return [t for t in re.split(r"[<>|]+", value) if t]


def _int(value: str | None, default: int = 0) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


_SCHEMA = """
CREATE TABLE q (id INTEGER PRIMARY KEY, accepted INTEGER, score INTEGER);
CREATE TABLE a (id INTEGER PRIMARY KEY, parent INTEGER, score INTEGER);
CREATE TABLE best (parent INTEGER PRIMARY KEY, id INTEGER, score INTEGER);
CREATE TABLE want (id INTEGER PRIMARY KEY);
CREATE TABLE qtext (id INTEGER PRIMARY KEY, title TEXT, body TEXT, tags TEXT, owner TEXT,
                    license TEXT, score INTEGER, accepted INTEGER);
CREATE TABLE atext (id INTEGER PRIMARY KEY, body TEXT, owner TEXT, license TEXT, score INTEGER);
"""
_BATCH = 10_000       # integer rows per insert in pass 1
_TEXT_BATCH = 2_000   # text rows per insert in pass 2 (bounds the texts held at once)


def _first_pass(db: sqlite3.Connection, source: Path, min_score: int, skips: Skips) -> None:
    """Integers only: kept questions, every answer's (id, parent, score); then in SQL the
    best non-accepted answer per question and the set of answer ids whose text is needed."""
    qrows: list[tuple[int, int, int]] = []
    arows: list[tuple[int, int, int]] = []
    for row in iter_posts(source, skips):
        kind = row.get("PostTypeId")
        if kind == "1" and _int(row.get("Score")) >= min_score:
            qrows.append((_int(row.get("Id")), _int(row.get("AcceptedAnswerId"), -1), _int(row.get("Score"))))
        elif kind == "2":
            arows.append((_int(row.get("Id")), _int(row.get("ParentId"), -1), _int(row.get("Score"))))
        if len(qrows) + len(arows) >= _BATCH:
            db.executemany("INSERT OR IGNORE INTO q VALUES (?, ?, ?)", qrows)
            db.executemany("INSERT OR IGNORE INTO a VALUES (?, ?, ?)", arows)
            qrows.clear()
            arows.clear()
    db.executemany("INSERT OR IGNORE INTO q VALUES (?, ?, ?)", qrows)
    db.executemany("INSERT OR IGNORE INTO a VALUES (?, ?, ?)", arows)
    db.executescript("""
        CREATE INDEX a_parent ON a(parent);
        INSERT INTO best
          SELECT parent, id, score FROM (
            SELECT a.parent, a.id, a.score,
                   ROW_NUMBER() OVER (PARTITION BY a.parent ORDER BY a.score DESC, a.id) AS rn
            FROM a JOIN q ON q.id = a.parent WHERE a.id != q.accepted)
          WHERE rn = 1;
        INSERT OR IGNORE INTO want SELECT q.accepted FROM q JOIN a ON a.id = q.accepted;
        INSERT OR IGNORE INTO want SELECT id FROM best;
        DELETE FROM a;
    """)
    db.commit()


def _second_pass(db: sqlite3.Connection, source: Path) -> None:
    """Texts of the kept questions and of their accepted and best answers."""
    qrows: list[tuple] = []
    arows: list[tuple] = []
    for row in iter_posts(source, Skips()):  # errors were counted in the first pass
        kind = row.get("PostTypeId")
        pid = _int(row.get("Id"))
        owner = row.get("OwnerUserId") or row.get("OwnerDisplayName") or "unknown"
        if kind == "1":
            if db.execute("SELECT 1 FROM q WHERE id=?", (pid,)).fetchone():
                qrows.append((pid, row.get("Title", ""), row.get("Body", ""), row.get("Tags", ""), owner,
                              spdx_license(row.get("ContentLicense")), _int(row.get("Score")),
                              _int(row.get("AcceptedAnswerId"), -1)))
        elif kind == "2":
            if db.execute("SELECT 1 FROM want WHERE id=?", (pid,)).fetchone():
                arows.append((pid, row.get("Body", ""), owner, spdx_license(row.get("ContentLicense")),
                              _int(row.get("Score"))))
        if len(qrows) + len(arows) >= _TEXT_BATCH:
            db.executemany("INSERT OR IGNORE INTO qtext VALUES (?, ?, ?, ?, ?, ?, ?, ?)", qrows)
            db.executemany("INSERT OR IGNORE INTO atext VALUES (?, ?, ?, ?, ?)", arows)
            qrows.clear()
            arows.clear()
    db.executemany("INSERT OR IGNORE INTO qtext VALUES (?, ?, ?, ?, ?, ?, ?, ?)", qrows)
    db.executemany("INSERT OR IGNORE INTO atext VALUES (?, ?, ?, ?, ?)", arows)
    db.commit()


def _join_licenses(licenses: Iterable[str]) -> str:
    unique = sorted(set(licenses))
    return unique[0] if len(unique) == 1 else " AND ".join(unique)


def qa_records(source: Path, site: str, min_score: int = 0, skips: Skips | None = None,
               require_answer: bool = True) -> Iterator[dict[str, Any]]:
    """One record per question of a site dump: title, body, tags, accepted and top other answer.

    ``text`` is the question (title, body) followed by the accepted answer, then the
    best-scored other answer; fields ``title``, ``question``, ``tags``,
    ``accepted_answer``, ``top_answer``, ``question_id``, ``score``, ``site`` keep the
    parts. Questions below `min_score`, and (with `require_answer`) questions without
    any answer, are left out. ``license`` is the row licences joined with ``AND`` when
    question and answers differ; ``attribution`` credits the question's author and
    each answer's author. See the module docstring for the memory trade-off.
    """
    skips = skips if skips is not None else Skips()
    source = Path(source)
    with _posts_file(source, skips) as path:
        if path is None:
            return
        with tempfile.TemporaryDirectory(prefix="se-join-") as tmp:
            db = sqlite3.connect(os.path.join(tmp, "join.sqlite"))
            try:
                db.executescript(_SCHEMA)
                _first_pass(db, path, min_score, skips)
                _second_pass(db, path)
                query = """
                    SELECT q.id, q.title, q.body, q.tags, q.owner, q.license, q.score,
                           a.id, a.body, a.owner, a.license, a.score,
                           t.id, t.body, t.owner, t.license, t.score
                    FROM qtext q
                    LEFT JOIN atext a ON a.id = q.accepted
                    LEFT JOIN best b ON b.parent = q.id
                    LEFT JOIN atext t ON t.id = b.id
                    ORDER BY q.id"""
                for row in db.execute(query):
                    record = _qa_record(site, row)
                    if record is None:
                        continue
                    if require_answer and not (record["accepted_answer"] or record["top_answer"]):
                        skips.add("unanswered", f"{site}/q/{row[0]}", example=False)
                        continue
                    yield record
            finally:
                db.close()


def _qa_record(site: str, row: tuple) -> dict[str, Any] | None:
    (qid, title, qbody, tags, qowner, qlic, qscore,
     aid, abody, aowner, alic, ascore, tid, tbody, towner, tlic, tscore) = row
    title = " ".join((title or "").split())
    if not title:
        return None
    question = html_to_text(qbody or "")
    accepted = html_to_text(abody or "") if aid is not None else ""
    top = html_to_text(tbody or "") if tid is not None else ""
    tag_list = _tags(tags)
    parts = [title, question]
    if tag_list:
        parts.append("Tags: " + ", ".join(tag_list))
    if accepted:
        parts.append("Accepted answer:\n" + accepted)
    if top:
        parts.append(f"Answer (score {tscore}):\n" + top)
    licenses = [qlic] + ([alic] if accepted else []) + ([tlic] if top else [])
    license = _join_licenses(licenses)
    attribution = f"{site} question {qid} by user {qowner}, {_HUMAN_LICENSES.get(qlic, qlic)}, https://{site}/q/{qid}"
    if accepted:
        attribution += f"; answer {aid} by user {aowner}, https://{site}/a/{aid}"
    if top:
        attribution += f"; answer {tid} by user {towner}, https://{site}/a/{tid}"
    return make_record(
        "\n\n".join(p for p in parts if p), kind="qa", source="stackexchange", license=license,
        attribution=attribution, url=f"https://{site}/q/{qid}", path=f"{site}/q/{qid}", language="en",
        site=site, question_id=int(qid), score=int(qscore or 0), title=title, question=question,
        tags=tag_list, accepted_answer=accepted, accepted_answer_id=aid, top_answer=top, top_answer_id=tid)


def qa_pairs(records: Iterable[dict]) -> list[dict]:
    """(question title -> accepted answer text) pairs for the embedder and the ranker.

    Same schema as :func:`apex_models.data.conala.load_conala_pairs`; ``package`` is the
    site, the unit that dataset splits keep whole.
    """
    pairs = []
    for r in records:
        if not r.get("accepted_answer") or not r.get("title"):
            continue
        pairs.append({
            "query": r["title"], "code": r["accepted_answer"], "package": r["site"], "version": "",
            "path": r["path"], "qualname": "", "license": r["license"], "source": "stackexchange",
            "attribution": r["attribution"], "docstring_kept": False,
            "sha256": pair_sha256(r["title"], r["accepted_answer"]),
        })
    return pairs


_WORDS = ("cli", "node", "wallet", "transaction", "script", "error", "build", "install", "version", "config",
          "python", "query", "address", "token", "policy", "deploy", "socket", "key", "file", "network",
          "fails", "returns", "missing", "how", "why", "when", "using", "with", "after", "update")


def write_synthetic_dump(path: Path, n_questions: int, answers_per_question: int = 2, seed: int = 0,
                         body_words: int = 120) -> int:
    """Write a Posts.xml in the dump format, streamed to disk; returns its size in bytes.

    For throughput and memory checks at sizes no fixture holds (a 200 MB dump is a few
    lines of this). Bodies are HTML with a code block; every 50th answer carries an
    e-mail address so the scrubber has work. Deterministic for a seed.
    """
    import random
    from xml.sax.saxutils import quoteattr

    rng = random.Random(seed)

    def words(n: int) -> str:
        return " ".join(rng.choice(_WORDS) + str(rng.randrange(1000)) for _ in range(n))

    def attr(value: str) -> str:
        return quoteattr(value).replace("\n", "&#xA;")

    post_id = 0
    with open(path, "w", encoding="utf-8") as fh:
        fh.write('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n')
        for q in range(n_questions):
            post_id += 1
            qid = post_id
            accepted = qid + 1
            body = f"<p>{words(body_words)}</p><pre><code>{words(8)}\n  {words(6)}\n</code></pre>"
            fh.write(f'  <row Id="{qid}" PostTypeId="1" AcceptedAnswerId="{accepted}" Score="{rng.randrange(-2, 30)}" '
                     f'OwnerUserId="{rng.randrange(1, 5000)}" Title={attr(words(9))} Body={attr(body)} '
                     f'Tags="&lt;{rng.choice(_WORDS)}&gt;" ContentLicense="CC BY-SA 4.0" />\n')
            for a in range(answers_per_question):
                post_id += 1
                extra = f" mail admin{post_id}@corp{post_id % 7}.io" if post_id % 50 == 0 else ""
                body = f"<p>{words(body_words)}{extra}</p><pre><code>{words(6)}\n</code></pre>"
                fh.write(f'  <row Id="{post_id}" PostTypeId="2" ParentId="{qid}" Score="{rng.randrange(0, 40)}" '
                         f'OwnerUserId="{rng.randrange(1, 5000)}" Body={attr(body)} ContentLicense="CC BY-SA 4.0" />\n')
        fh.write("</posts>\n")
    return Path(path).stat().st_size
