"""Documentation -> one record per section, with the section's heading path.

Documentation answers "how do I ..." in the maintainers' words, and a section is the
unit a developer's question maps to. Each record keeps its heading path (``json > Basic
Usage``) so a model sees where the text sits, and code blocks are kept verbatim.

Inputs: Sphinx HTML (Debian ``*-doc`` packages, fetched with ``apt-get download`` and
unpacked with ``dpkg-deb -x``: no root install), reStructuredText and Markdown (docs in
sdists, READMEs). Walking a tree never follows symlinks (no loops), skips oversized,
binary and non-UTF-8 files with a counted reason, and never raises on one bad file.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Iterator

from apex_models.data.records import Skips, make_record
from apex_models.data.stackexchange import rewrite_html_tree, tidy_text

log = logging.getLogger(__name__)

Section = tuple[tuple[str, ...], str]

DOC_SUFFIXES = (".html", ".htm", ".rst", ".md", ".markdown", ".txt")
# Sphinx build folders that duplicate the HTML (reST sources) or hold no prose.
SKIP_DIRS = {"_sources", "_static", "_images", "_downloads", ".git", "__pycache__", "node_modules"}
MAX_FILE_BYTES = 2_000_000
MIN_SECTION_CHARS = 80

_FENCE = re.compile(r"^\s{0,3}(```|~~~)")
_ATX = re.compile(r"^\s{0,3}(#{1,6})\s+(.+?)\s*#*\s*$")


def _push(path: list[tuple[int, str]], level: int, title: str) -> tuple[str, ...]:
    while path and path[-1][0] >= level:
        path.pop()
    path.append((level, title))
    return tuple(t for _, t in path)


def split_markdown(text: str) -> list[Section]:
    """(heading path, section text) for each ATX (``#``) or setext (``===``/``---``) section.

    Lines inside fenced code blocks are never taken for headings (``# comment`` in a
    shell block). Text before the first heading has an empty path.
    """
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    current: tuple[str, ...] = ()
    buf: list[str] = []
    in_fence = False
    lines = text.splitlines()

    def flush() -> None:
        body = "\n".join(buf).strip()
        if body:
            sections.append((current, body))
        buf.clear()

    for i, line in enumerate(lines):
        if _FENCE.match(line):
            in_fence = not in_fence
            buf.append(line)
            continue
        if not in_fence:
            m = _ATX.match(line)
            if m:
                flush()
                current = _push(stack, len(m.group(1)), m.group(2).strip())
                continue
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            if line.strip() and not line.startswith((" ", "\t", "-", "*")) and re.fullmatch(r"\s{0,3}(=+|-+)\s*", nxt) \
                    and len(nxt.strip()) >= 2:
                flush()
                current = _push(stack, 1 if nxt.strip()[0] == "=" else 2, line.strip())
                lines[i + 1] = ""  # the underline is not body text
                continue
        buf.append(line)
    flush()
    return sections


_RST_ADORNMENT = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")


def split_rst(text: str) -> list[Section]:
    """(heading path, section text) for reST, whose heading levels are set by the order
    in which adornment styles (underline character, with or without overline) appear."""
    lines = text.splitlines()
    styles: list[tuple[str, bool]] = []
    sections: list[Section] = []
    stack: list[tuple[int, str]] = []
    current: tuple[str, ...] = ()
    buf: list[str] = []

    def flush() -> None:
        body = "\n".join(buf).strip()
        if body:
            sections.append((current, body))
        buf.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        over = _RST_ADORNMENT.match(line)
        # Overlined title: ===== / Title / =====
        if over and i + 2 < len(lines) and lines[i + 1].strip() and _RST_ADORNMENT.match(lines[i + 2]) \
                and lines[i + 2].strip()[0] == line.strip()[0]:
            style, title, step = (line.strip()[0], True), lines[i + 1].strip(), 3
        elif line.strip() and not line[0].isspace() and i + 1 < len(lines) \
                and (under := _RST_ADORNMENT.match(lines[i + 1])) and len(lines[i + 1].rstrip()) >= len(line.rstrip()) \
                and not _RST_ADORNMENT.match(line):
            style, title, step = (under.group(1), False), line.strip(), 2
        else:
            buf.append(line)
            i += 1
            continue
        flush()
        if style not in styles:
            styles.append(style)
        current = _push(stack, styles.index(style) + 1, title)
        i += step
    flush()
    return sections


_HEADING = re.compile(r"^h[1-6]$")


def _heading_text(tag) -> str:
    return " ".join(tag.get_text(" ").replace("¶", "").split())


def split_sphinx_html(html: str) -> list[Section]:
    """(heading path, text) for each Sphinx section (``<section>`` or ``div.section``).

    A section's text is its own content without its subsections (they are sections of
    their own), rendered by :func:`~apex_models.data.stackexchange.html_to_text` so code
    blocks stay fenced. Navigation, sidebars and footers are outside the main body and
    are dropped. A page without sections is one section named by its ``<title>``.
    """
    from bs4 import BeautifulSoup, NavigableString

    soup = BeautifulSoup(html, "lxml")
    main = (soup.find(attrs={"role": "main"}) or soup.find("div", class_="body")
            or soup.find("main") or soup.body or soup)
    for link in main.find_all("a", class_="headerlink"):
        link.decompose()  # the pilcrow permalinks

    def is_section(tag) -> bool:
        return getattr(tag, "name", None) == "section" or (
            getattr(tag, "name", None) == "div" and "section" in (tag.get("class") or []))

    # Headings first (before the rewrite adds block breaks), then one rewrite of the page.
    titles = {id(s): _heading_text(h) for s in main.find_all(is_section)
              if (h := s.find(_HEADING)) is not None}
    headings = {id(h) for s in main.find_all(is_section) if (h := s.find(_HEADING)) is not None}
    rewrite_html_tree(main)
    sections: list[Section] = []

    def walk(node, path: tuple[str, ...]) -> None:
        title = titles.get(id(node), "")
        here = path + (title,) if title else path
        own: list[str] = []
        children = []
        for child in node.children:
            if is_section(child):
                children.append(child)
            elif id(child) in headings:
                continue
            elif isinstance(child, NavigableString):
                own.append(str(child))
            else:
                own.append(child.get_text())
        text = tidy_text("".join(own))
        if text:
            sections.append((here, text))
        for child in children:
            walk(child, here)

    tops = [s for s in main.find_all(is_section) if not any(is_section(p) for p in s.parents)]
    if not tops:
        title = soup.title.get_text().strip() if soup.title else ""
        text = tidy_text(main.get_text())
        return [((title,) if title else (), text)] if text else []
    for top in tops:
        walk(top, ())
    return sections


def fetch_debian_doc(package: str, dest: Path, timeout: int = 900) -> Path | None:
    """Download a Debian package with ``apt-get download`` and unpack it with ``dpkg-deb -x``.

    Returns ``dest/extracted`` (the package's file tree), or None with a logged reason
    when apt is unavailable or fails (offline machine, unknown package): a missing
    documentation source must never stop the corpus stage. A .deb already in `dest` is
    reused, so re-runs work offline.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if not shutil.which("dpkg-deb"):
        log.warning("dpkg-deb not found: Debian documentation package %s skipped", package)
        return None
    debs = sorted(dest.glob(f"{package}_*.deb"))
    if not debs:
        if not shutil.which("apt-get"):
            log.warning("apt-get not found: Debian documentation package %s skipped", package)
            return None
        try:
            proc = subprocess.run(["apt-get", "download", package], cwd=dest, capture_output=True, text=True,
                                  timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("apt-get download %s failed: %s", package, exc)
            return None
        if proc.returncode != 0:
            log.warning("apt-get download %s failed (exit %d): %s", package, proc.returncode,
                        (proc.stderr or proc.stdout).strip()[-500:])
            return None
        debs = sorted(dest.glob(f"{package}_*.deb"))
        if not debs:
            log.warning("apt-get download %s succeeded but no .deb is in %s", package, dest)
            return None
    out = dest / "extracted"
    try:
        proc = subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(out)], capture_output=True, text=True,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("dpkg-deb -x %s failed: %s", debs[-1].name, exc)
        return None
    if proc.returncode != 0:
        log.warning("dpkg-deb -x %s failed (exit %d): %s", debs[-1].name, proc.returncode, proc.stderr.strip()[-500:])
        return None
    dropped = drop_symlinks(out)
    if dropped:
        log.info("%s: removed %d symbolic links from the unpacked tree", package, dropped)
    return out


def drop_symlinks(root: Path) -> int:
    """Delete every symbolic link under `root`; returns how many.

    Debian documentation packages link to files of other packages (python3.11-doc's
    `_static/jquery.js` -> /usr/share/javascript/...), which are absent here. The walkers
    never follow links anyway, but DVC hashes the unpacked tree as a stage output and
    fails on a dangling link, so the links go right after unpacking.
    """
    count = 0
    for folder, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                os.unlink(path)
                count += 1
    return count


def _read_text(path: Path, max_file_bytes: int, skips: Skips, where: str = "") -> str | None:
    """The file's text, or None with the reason counted (`where` names it in the report)."""
    where = where or str(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        skips.add("unreadable", where, str(exc))
        return None
    if size > max_file_bytes:
        skips.add("too_large", where, f"{size} bytes")
        return None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        skips.add("unreadable", where, str(exc))
        return None
    if b"\x00" in raw[:8192]:
        skips.add("binary", where)
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        skips.add("not_utf8", where)
        return None


def split_file(name: str, text: str) -> list[Section]:
    """Sections of one documentation file, by its suffix."""
    low = name.lower()
    if low.endswith((".html", ".htm")):
        return split_sphinx_html(text)
    if low.endswith((".md", ".markdown")):
        return split_markdown(text)
    return split_rst(text)  # .rst, and .txt (plain text has no adornments: one section)


def doc_records(root: Path, source: str, license: str, attribution: str, max_file_bytes: int = MAX_FILE_BYTES,
                min_section_chars: int = MIN_SECTION_CHARS, skips: Skips | None = None,
                url_prefix: str = "") -> Iterator[dict[str, Any]]:
    """One record per section of every documentation file under `root`, in path order.

    ``text`` is the heading path (``A > B``) then the section's text; extra fields
    ``heading_path`` (list) and ``doc_source`` (the `source` label, e.g. the Debian
    package). Symlinks are never followed (``os.walk(followlinks=False)``), so a link
    loop cannot recurse; links, oversized, binary and non-UTF-8 files are counted in
    `skips`. Sections shorter than `min_section_chars` (link lists, stubs) are dropped.
    """
    from tqdm.auto import tqdm

    skips = skips if skips is not None else Skips()
    root = Path(root)
    if not root.is_dir():
        skips.add("missing", root)
        return
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for d in list(dirnames):
            full = Path(dirpath) / d
            if full.is_symlink():
                skips.add("symlink", full.relative_to(root).as_posix())
            if d in SKIP_DIRS or full.is_symlink():
                dirnames.remove(d)
        dirnames.sort()
        for name in sorted(filenames):
            full = Path(dirpath) / name
            if not name.lower().endswith(DOC_SUFFIXES):
                continue
            if full.is_symlink():
                skips.add("symlink", full.relative_to(root).as_posix())
                continue
            files.append(full)
    for path in tqdm(files, desc=f"docs {source}", unit="file", disable=len(files) < 200):
        rel = path.relative_to(root).as_posix()
        text = _read_text(path, max_file_bytes, skips, where=rel)
        if text is None:
            continue
        try:
            sections = split_file(path.name, text)
        except Exception as exc:  # a parser bug on one odd file must not stop the stage
            skips.add("unparsable", rel, f"{type(exc).__name__}: {exc}")
            continue
        for heading_path, body in sections:
            if len(body) < min_section_chars:
                continue
            heading = " > ".join(h for h in heading_path if h)
            yield make_record(
                f"{heading}\n\n{body}" if heading else body, kind="doc", source="docs", license=license,
                attribution=attribution, url=f"{url_prefix}{rel}" if url_prefix else "", path=rel,
                language="en", heading_path=list(heading_path), doc_source=source)
