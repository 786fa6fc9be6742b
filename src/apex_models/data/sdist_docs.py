"""Documentation and changelogs inside the sdists of pinned distributions.

Wheels carry code; the source distribution also carries what the maintainers wrote for
people: ``README*``, a ``docs/`` or ``doc/`` tree (reST, Markdown, sometimes built HTML)
and ``CHANGES``/``CHANGELOG``/``NEWS``/``HISTORY`` files. Each sdist is fetched with
``pip download --no-binary :all: --no-deps`` (once; re-runs reuse it offline), its
licence resolved from ``PKG-INFO`` and licence files exactly as for the code
(:func:`apex_models.data.licenses.spdx_from_metadata`), and its members streamed from
the archive (never unpacked): documentation files become sections with their heading
path (:func:`apex_models.data.docs.split_file`), changelog files become (version,
changes) records. Links, oversized, binary and non-UTF-8 members and damaged archives
are skipped and counted.
"""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

from apex_models.data.changelogs import CHANGELOG_NAMES, changelog_record, parse_news_changelog
from apex_models.data.docs import DOC_SUFFIXES, SKIP_DIRS, split_file
from apex_models.data.licenses import spdx_from_metadata
from apex_models.data.pypi import _archive_name_version, _canonical, _split_spec, read_distribution_metadata
from apex_models.data.records import Skips, make_record

log = logging.getLogger(__name__)

SDIST_SUFFIXES = (".tar.gz", ".tgz", ".zip")
_DOC_DIRS = {"doc", "docs", "documentation"}


def find_sdist(spec: str, dest: Path) -> Path | None:
    """The sdist already in `dest` for a pinned spec, else None."""
    name, version = _split_spec(spec)
    if version is None or not dest.is_dir():
        return None
    for path in sorted(dest.iterdir()):
        parsed = _archive_name_version(path.name) if path.name.endswith(SDIST_SUFFIXES) else None
        if parsed and _canonical(parsed[0]) == _canonical(name) and parsed[1] == version:
            return path
    return None


def download_sdist(spec: str, dest: Path, index_url: str | None = None, timeout: int = 300) -> Path | None:
    """`spec`'s sdist in `dest` (fetched with pip when missing); None with a logged reason."""
    dest.mkdir(parents=True, exist_ok=True)
    found = find_sdist(spec, dest)
    if found is not None:
        return found
    # pip prepares an sdist's metadata (installing its build backend) even with --no-deps:
    # fine for pure-Python packages, minutes or a failure for compiled ones (numpy, scipy).
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
           "--disable-pip-version-check", "--quiet", "-d", str(dest)] + (["--index-url", index_url] if index_url else [])
    try:
        proc = subprocess.run(cmd + [spec], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("pip download %s (sdist) failed: %s", spec, exc)
        return None
    if proc.returncode != 0:
        log.warning("pip download %s (sdist) failed: %s", spec, (proc.stderr or proc.stdout).strip()[-300:])
        return None
    return find_sdist(spec, dest)


def _kind(path: str) -> str | None:
    """"doc", "changelog" or None for a member path (``top/...`` inside the sdist)."""
    parts = PurePosixPath(path).parts[1:]  # drop the sdist's top folder
    if not parts or any(p in SKIP_DIRS for p in parts):
        return None
    name = parts[-1]
    if len(parts) == 1 and CHANGELOG_NAMES.match(name):
        return "changelog"
    if not name.lower().endswith(DOC_SUFFIXES):
        return None
    if len(parts) == 1 and re.match(r"(?i)^readme", name):
        return "doc"
    if parts[0].lower() in _DOC_DIRS and len(parts) > 1:
        return "changelog" if CHANGELOG_NAMES.match(name) else "doc"
    return None


def _members(archive: Path, max_file_bytes: int, skips: Skips) -> Iterator[tuple[str, str, str]]:
    """(path, kind, text) of the archive's doc and changelog members, streamed in archive order."""
    def decode(path: str, data: bytes) -> str | None:
        if b"\x00" in data:
            skips.add("binary", path)
            return None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            skips.add("not_utf8", path)
            return None

    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    kind = _kind(info.filename)
                    if kind is None or info.is_dir():
                        continue
                    if (info.external_attr >> 16) & 0o170000 == 0o120000:
                        skips.add("symlink", info.filename)
                        continue
                    if info.file_size > max_file_bytes:
                        skips.add("too_large", info.filename, f"{info.file_size} bytes")
                        continue
                    text = decode(info.filename, zf.read(info))
                    if text is not None:
                        yield info.filename, kind, text
        else:
            with tarfile.open(archive, "r:*") as tf:
                for member in tf:  # streaming: members are read as the archive is decompressed
                    kind = _kind(member.name)
                    if kind is None:
                        continue
                    if member.issym() or member.islnk():
                        skips.add("symlink", member.name)
                        continue
                    if not member.isfile():
                        continue
                    if member.size > max_file_bytes:
                        skips.add("too_large", member.name, f"{member.size} bytes")
                        continue
                    fh = tf.extractfile(member)
                    text = decode(member.name, fh.read()) if fh is not None else None
                    if text is not None:
                        yield member.name, kind, text
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, OSError) as exc:
        skips.add("bad_archive", archive.name, f"{type(exc).__name__}: {exc}")


def sdist_doc_records(archive: Path, max_file_bytes: int, min_section_chars: int,
                      skips: Skips | None = None) -> Iterator[dict[str, Any]]:
    """Doc sections and changelog entries of one sdist (see the module doc)."""
    skips = skips if skips is not None else Skips()
    archive = Path(archive)
    name, version, metadata, license_files = read_distribution_metadata(archive)
    if not metadata:  # read_distribution_metadata never raises: a damaged archive reads as empty
        skips.add("bad_archive", archive.name, "no readable PKG-INFO (truncated, or not an sdist)")
        return
    license = spdx_from_metadata(metadata, license_files)
    if not license:
        skips.add("unknown_license", archive.name)
        return
    attribution = f"{name} {version} (sdist from PyPI), {license}"
    url = f"https://pypi.org/project/{name}/{version}/"
    for path, kind, text in _members(archive, max_file_bytes, skips):
        rel = "/".join(PurePosixPath(path).parts[1:])
        try:
            if kind == "changelog":
                for heading_version, changes in parse_news_changelog(text):
                    yield changelog_record(name, heading_version, changes, license, attribution, f"{name}/{rel}",
                                           url=url, doc_source=f"{name} sdist")
                continue
            sections = split_file(PurePosixPath(path).name, text)
        except Exception as exc:  # a parser bug on one odd file must not stop the stage
            skips.add("unparsable", path, f"{type(exc).__name__}: {exc}")
            continue
        for heading_path, body in sections:
            if len(body) < min_section_chars:
                continue
            heading = " > ".join(h for h in heading_path if h)
            yield make_record(f"{heading}\n\n{body}" if heading else body, kind="doc", source="docs",
                              license=license, attribution=attribution, url=url, path=f"{name}/{rel}",
                              language="en", heading_path=list(heading_path), doc_source=f"{name} sdist")
