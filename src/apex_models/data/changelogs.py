"""Changelogs as (version, list of changes): Debian changelogs and CHANGELOG/NEWS files.

Changelogs say, in the maintainers' words, what changed and why between versions:
the text behind "why is X pinned to 3.1?" questions and the planner's upgrade steps.
Two formats cover most of them: Debian's strict ``debian/changelog`` (every ``*-doc``
package ships ``changelog.Debian.gz``) and the loose Markdown/reST CHANGELOG, NEWS or
HISTORY files of sdists, whose headings name a version and whose bullets are changes.
"""

from __future__ import annotations

import gzip
import logging
import re
from pathlib import Path
from typing import Any, Iterator

from apex_models.data.records import Skips, make_record

log = logging.getLogger(__name__)

_DEB_HEADER = re.compile(r"^(?P<package>[a-z0-9][a-z0-9+.\-]*) \((?P<version>[^)\s]+)\) (?P<dist>[^;]+);(?P<meta>.*)$")
_DEB_TRAILER = re.compile(r"^ -- (?P<author>.+?)  (?P<date>.+)$")
_VERSION = re.compile(r"(?<![\w.])v?(\d+(?:\.\d+)+(?:[-.]?(?:a|b|rc|alpha|beta|post|dev)\d*)?)(?![\w.])", re.IGNORECASE)
_BULLET = re.compile(r"^(\s*)([-*+]|\d+[.)])\s+(.*)$")
CHANGELOG_NAMES = re.compile(r"^(changelog|changes|news|history|release[-_ ]?notes)(\.(md|rst|txt|markdown))?$",
                             re.IGNORECASE)
MAX_CHANGELOG_BYTES = 5_000_000


def parse_debian_changelog(text: str) -> list[dict[str, Any]]:
    """Entries of a Debian changelog, newest first: package, version, distribution,
    urgency, changes (one string per ``*`` item, continuation lines joined), author, date."""
    entries: list[dict[str, Any]] = []
    current: dict[str, Any] | None = None
    for line in text.splitlines():
        header = _DEB_HEADER.match(line)
        if header:
            meta = dict(kv.strip().split("=", 1) for kv in header.group("meta").split(",") if "=" in kv)
            current = {"package": header.group("package"), "version": header.group("version"),
                       "distribution": header.group("dist").strip(), "urgency": meta.get("urgency", ""),
                       "changes": [], "author": "", "date": ""}
            entries.append(current)
            continue
        if current is None:
            continue
        trailer = _DEB_TRAILER.match(line)
        if trailer:
            current["author"], current["date"] = trailer.group("author"), trailer.group("date").strip()
            current = None
            continue
        stripped = line.strip()
        if re.match(r"^[*+-] ", stripped):
            current["changes"].append(stripped[2:].strip())
        elif stripped.startswith("[") and stripped.endswith("]"):
            continue  # "[ Contributor Name ]" group headers
        elif stripped and current["changes"]:
            current["changes"][-1] += " " + stripped
    return entries


def parse_news_changelog(text: str) -> list[tuple[str, list[str]]]:
    """(version, changes) for each version heading of a Markdown/reST/plain changelog.

    A heading is a Markdown ``#`` line, or a line followed by an reST underline, or a
    short unindented line, that contains a version number; the bullets under it (until
    the next version heading) are its changes, continuation lines joined.
    """
    lines = text.splitlines()
    out: list[tuple[str, list[str]]] = []
    changes: list[str] | None = None
    bullet_indent = 0
    for i, line in enumerate(lines):
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        is_heading = (line.lstrip().startswith("#")
                      or (line.strip() and re.fullmatch(r"[=\-~^*`#]{3,}\s*", nxt or ""))
                      or (line and not line[0].isspace() and not _BULLET.match(line) and len(line) < 80))
        version = _VERSION.search(line) if is_heading else None
        if version:
            changes = []
            out.append((version.group(1), changes))
            continue
        if changes is None:
            continue
        bullet = _BULLET.match(line)
        if bullet:
            changes.append(bullet.group(3).strip())
            bullet_indent = len(bullet.group(1))
        elif line.strip() and changes and (len(line) - len(line.lstrip())) > bullet_indent \
                and not re.fullmatch(r"[=\-~^*`#]{3,}\s*", line.strip()):
            changes[-1] += " " + line.strip()
    return [(v, c) for v, c in out if c]


def _read_maybe_gz(path: Path, skips: Skips, where: str = "") -> str | None:
    where = where or path.name
    try:
        if path.stat().st_size > MAX_CHANGELOG_BYTES:
            skips.add("too_large", where)
            return None
        raw = gzip.open(path).read(MAX_CHANGELOG_BYTES * 10) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        skips.add("unreadable", where, str(exc))
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        skips.add("not_utf8", where)
        return None


def changelog_record(package: str, version: str, changes: list[str], license: str, attribution: str,
                     path: str, url: str = "", **extra: Any) -> dict[str, Any]:
    text = f"{package} {version}\n" + "\n".join(f"- {c}" for c in changes)
    return make_record(text, kind="changelog", source="changelog", license=license, attribution=attribution,
                       url=url, path=path, language="en", package=package, version=version, changes=changes,
                       **extra)


def debian_changelog_records(root: Path, license: str, attribution: str,
                             skips: Skips | None = None) -> Iterator[dict[str, Any]]:
    """One record per entry of every ``usr/share/doc/*/changelog.Debian.gz`` under `root`
    (an unpacked package), in path order. Links are not followed."""
    skips = skips if skips is not None else Skips()
    doc = Path(root) / "usr" / "share" / "doc"
    if not doc.is_dir():
        return
    for folder in sorted(p for p in doc.iterdir() if p.is_dir() and not p.is_symlink()):
        path = folder / "changelog.Debian.gz"
        if not path.is_file() or path.is_symlink():
            continue
        rel = path.relative_to(root).as_posix()
        text = _read_maybe_gz(path, skips, where=rel)
        if text is None:
            continue
        for entry in parse_debian_changelog(text):
            if entry["changes"]:
                yield changelog_record(entry["package"], entry["version"], entry["changes"], license, attribution,
                                       rel, distribution=entry["distribution"], date=entry["date"])
