"""tldr-pages: (task description -> shell command) examples, read straight from the tarball.

Each page is Markdown: ``# name``, ``> description`` lines, then examples written as
``- description:`` followed by a line with the command in backticks. The commands keep
their ``{{placeholders}}``: a model should learn that ``{{path/to/file}}`` is where a
path goes, not a made-up file name. The archive is read as a stream (``r|gz``), never
extracted to disk, and a damaged archive stops with what was read before the damage.
"""

from __future__ import annotations

import logging
import re
import tarfile
import zlib
from pathlib import Path
from typing import Any, Iterable, Iterator

from apex_models.data.code_pairs import pair_sha256
from apex_models.data.records import Skips, make_record

log = logging.getLogger(__name__)

TLDR_LICENSE = "CC-BY-4.0"
_PAGE = re.compile(r"^pages(?:\.[\w-]+)?/([\w.-]+)/([^/]+)\.md$")
MAX_PAGE_BYTES = 1_000_000


def parse_page(text: str) -> list[tuple[str, str]]:
    """(description, command) for every example of one page, in page order."""
    examples = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if line.startswith("- "):
            description = line[2:].strip().rstrip(":").strip()
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines):
                cmd = lines[j].strip()
                if len(cmd) >= 2 and cmd.startswith("`") and cmd.endswith("`"):
                    examples.append((description, cmd[1:-1]))
                    i = j
        i += 1
    return examples


def tldr_records(tar_path: Path, platforms: Iterable[str] | None = None,
                 skips: Skips | None = None) -> Iterator[dict[str, Any]]:
    """One record per example of every ``pages*/<platform>/<page>.md`` in the tar.gz.

    Fields beyond the common ones: ``query`` (the description), ``code`` (the command),
    ``page`` (e.g. ``tar``), ``platform`` (``common``, ``linux``...). `platforms` keeps
    only those platforms (None: all). Non-UTF-8 or oversized pages are skipped and
    counted; a truncated or corrupt archive ends the stream with ``bad_archive``.
    """
    skips = skips if skips is not None else Skips()
    wanted = set(platforms) if platforms is not None else None
    tar_path = Path(tar_path)
    if not tar_path.is_file():
        skips.add("missing", tar_path.name)
        return
    try:
        with tarfile.open(tar_path, "r|gz") as tf:
            for member in tf:
                match = _PAGE.match(member.name)
                if not match or not member.isfile():
                    continue
                platform, page = match.group(1), match.group(2)
                if wanted is not None and platform not in wanted:
                    continue
                if member.size > MAX_PAGE_BYTES:
                    skips.add("too_large", member.name, f"{member.size} bytes")
                    continue
                fh = tf.extractfile(member)
                raw = fh.read() if fh is not None else b""
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    skips.add("not_utf8", member.name)
                    continue
                for description, command in parse_page(text):
                    query = " ".join(description.split())
                    yield make_record(
                        f"{query}\n{command}", kind="command", source="tldr", license=TLDR_LICENSE,
                        attribution=f"tldr-pages, {member.name}, CC BY 4.0",
                        url=f"https://github.com/tldr-pages/tldr/blob/main/{member.name}",
                        path=member.name, language="shell", query=query, code=command,
                        page=page, platform=platform)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        skips.add("bad_archive", tar_path.name, f"{type(exc).__name__}: {exc}")


def tldr_pairs(records: Iterable[dict]) -> list[dict]:
    """(description -> command) pairs in the pair schema of :mod:`apex_models.data.conala`.

    ``package`` is ``tldr:<platform>`` so splits can keep a platform whole; ``qualname``
    holds the page, a finer unit when a split needs one.
    """
    pairs = []
    for r in records:
        if not r.get("query") or not r.get("code"):
            continue
        pairs.append({
            "query": r["query"], "code": r["code"], "package": f"tldr:{r['platform']}", "version": "",
            "path": r["path"], "qualname": r["page"], "license": r["license"], "source": "tldr",
            "attribution": r["attribution"], "docstring_kept": False,
            "sha256": pair_sha256(r["query"], r["code"]),
        })
    return pairs
