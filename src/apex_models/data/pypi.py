"""Python source files from PyPI distributions, with licence and provenance per file.

The code corpus is a pinned list of distributions fetched with ``pip download`` (so a
mirror or a local index works the same way) and read straight out of the archives: no
install, no import, nothing executed. Each file record keeps the package, version, path,
licence and an attribution line, so every derived pair can be traced and credited.

Output record (one JSON object per line of the ``files`` JSONL):

``text``         the file's content (valid UTF-8)
``kind``         ``"code"``
``language``     ``"python"``
``source``       ``"pypi"``
``package``      distribution name as its METADATA spells it
``version``      distribution version
``path``         path of the file inside the archive
``license``      SPDX expression resolved by :func:`~apex_models.data.licenses.spdx_from_metadata`
``attribution``  ``"<name> <version>, <license>, from PyPI"``
``sha256``       sha256 of ``text`` encoded as UTF-8
``url``          ``https://pypi.org/project/<name>/<version>/``
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Iterator

from apex_models.data.licenses import is_allowed, spdx_from_metadata
from apex_models.hashing import sha256_bytes

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = (".whl", ".zip", ".tar.gz", ".tgz")
_TEST_DIRS = {"tests", "test", "testing"}
_LICENSE_NAME = re.compile(r"^(licen[cs]e|copying|notice|authors)", re.IGNORECASE)


def _canonical(name: str) -> str:
    """PEP 503 name normalisation, so `PyYAML`, `pyyaml` and `more_itertools` compare equal."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _archive_name_version(filename: str) -> tuple[str, str] | None:
    """(name, version) from a wheel or sdist file name; None when it is neither."""
    if filename.endswith(".whl"):
        parts = filename[:-4].split("-")
        return (parts[0], parts[1]) if len(parts) >= 5 else None
    for suffix in (".tar.gz", ".tgz", ".zip"):
        if filename.endswith(suffix):
            stem = filename[: -len(suffix)]
            if "-" in stem:
                name, version = stem.rsplit("-", 1)
                return name, version
    return None


def _split_spec(spec: str) -> tuple[str, str | None]:
    """`name==version` -> (name, version); any other spec -> (name, None)."""
    match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*(?:==\s*([^\s;,]+))?", spec)
    if not match:
        return spec.strip(), None
    version = match.group(2)
    rest = spec[match.end():].strip()
    return match.group(1), (version if version and not rest else None)


def _find_archive(spec: str, dest: Path) -> Path | None:
    """The archive already in `dest` for a pinned spec (wheel preferred), else None."""
    name, version = _split_spec(spec)
    if version is None or not dest.is_dir():
        return None
    hits = []
    for path in dest.iterdir():
        parsed = _archive_name_version(path.name)
        if parsed and _canonical(parsed[0]) == _canonical(name) and parsed[1] == version:
            hits.append(path)
    hits.sort(key=lambda p: (not p.name.endswith(".whl"), p.name))
    return hits[0] if hits else None


def _pip_download(spec: str, dest: Path, index_url: str | None, binary_only: bool) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--quiet", "-d", str(dest)]
    if binary_only:
        cmd.append("--only-binary=:all:")
    if index_url:
        cmd += ["--index-url", index_url]
    cmd.append(spec)
    return subprocess.run(cmd, capture_output=True, text=True)


def download_distributions(specs: list[str], dest: Path,
                           index_url: str | None = None) -> tuple[list[Path], dict[str, str]]:
    """Fetch one archive per spec into `dest`; returns (archives, failures by spec).

    Wheels are preferred (no build step, and the files are exactly what users install);
    a spec with no wheel falls back to its sdist. A pinned spec whose archive is already
    in `dest` is not fetched again, so re-runs work offline. A failing spec is recorded,
    not raised: one bad package must not stop the corpus stage.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    archives: list[Path] = []
    failures: dict[str, str] = {}
    for spec in tqdm(specs, desc="pip download", unit="pkg"):
        found = _find_archive(spec, dest)
        if found is not None:
            archives.append(found)
            continue
        before = set(dest.iterdir())
        result = _pip_download(spec, dest, index_url, binary_only=True)
        if result.returncode != 0:
            log.info("%s: no wheel (%s); trying the sdist", spec, result.stderr.strip()[-200:])
            result = _pip_download(spec, dest, index_url, binary_only=False)
        if result.returncode != 0:
            failures[spec] = (result.stderr.strip() or result.stdout.strip())[-500:] or f"pip exit {result.returncode}"
            log.warning("download failed for %s: %s", spec, failures[spec])
            continue
        found = _find_archive(spec, dest)
        if found is None:
            new = sorted(p for p in set(dest.iterdir()) - before if p.name.endswith(ARCHIVE_SUFFIXES))
            wanted = _canonical(_split_spec(spec)[0])
            new = [p for p in new if (nv := _archive_name_version(p.name)) and _canonical(nv[0]) == wanted]
            found = new[0] if new else None
        if found is None:
            failures[spec] = "pip succeeded but no archive for this spec was found in the destination"
            log.warning("%s: %s", spec, failures[spec])
            continue
        archives.append(found)
    return archives, failures


def _is_test_path(path: str) -> bool:
    parts = PurePosixPath(path).parts
    name = parts[-1] if parts else ""
    return (any(p in _TEST_DIRS for p in parts[:-1]) or name.startswith("test_")
            or name.endswith("_test.py") or name == "conftest.py")


def iter_python_files(archive: Path, max_file_bytes: int,
                      skipped: Counter | None = None) -> Iterator[tuple[str, bytes]]:
    """Yield (path inside the archive, raw bytes) of its `*.py` files, sorted by path.

    Tests are left out (they are mostly fixtures and asserts, poor retrieval targets), so
    are files over `max_file_bytes` (generated tables) and links. A corrupt archive is
    logged and yields what was read before the damage; it never raises. Pass a Counter as
    `skipped` to learn how many files were left out and why.
    """
    skipped = skipped if skipped is not None else Counter()
    archive = Path(archive)
    name = archive.name
    try:
        if name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as zf:
                for info in sorted(zf.infolist(), key=lambda i: i.filename):
                    path = info.filename
                    if info.is_dir() or not path.endswith(".py"):
                        continue
                    if stat.S_ISLNK(info.external_attr >> 16):
                        skipped["symlink"] += 1
                        continue
                    if _is_test_path(path):
                        skipped["test"] += 1
                        continue
                    if info.file_size > max_file_bytes:
                        skipped["too_large"] += 1
                        continue
                    yield path, zf.read(info)
        elif name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(archive, "r:gz") as tf:
                members = sorted(tf.getmembers(), key=lambda m: m.name)
                for member in members:
                    path = member.name
                    if not path.endswith(".py"):
                        continue
                    if member.issym() or member.islnk():
                        skipped["symlink"] += 1
                        continue
                    if not member.isfile():
                        continue
                    if _is_test_path(path):
                        skipped["test"] += 1
                        continue
                    if member.size > max_file_bytes:
                        skipped["too_large"] += 1
                        continue
                    fh = tf.extractfile(member)
                    if fh is not None:
                        yield path, fh.read()
        else:
            log.warning("%s: not a wheel, zip or tar.gz archive; skipped", name)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError) as exc:
        skipped["corrupt_archive"] += 1
        log.warning("%s: unreadable archive (%s); stopped reading it", name, exc)


def read_distribution_metadata(archive: Path) -> tuple[str, str, str, dict[str, str]]:
    """(name, version, METADATA text, licence files by path) of a wheel or sdist.

    Wheels: ``*.dist-info/METADATA`` and the licence files in ``*.dist-info/`` (PEP 639
    puts them under ``licenses/``). Sdists: the top-level ``PKG-INFO`` and LICENSE/COPYING
    files next to it. Name and version fall back to the file name when METADATA lacks them;
    an unreadable archive gives empty metadata rather than an error.
    """
    archive = Path(archive)
    metadata = ""
    licenses: dict[str, str] = {}

    def keep_license(path: str, data: bytes) -> None:
        if len(data) <= 200_000:
            licenses[path] = data.decode("utf-8", errors="replace")

    try:
        if archive.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as zf:
                names = sorted(zf.namelist())
                meta = [n for n in names if re.match(r"^[^/]+\.dist-info/METADATA$", n)]
                if not meta:
                    meta = sorted((n for n in names if n.endswith("/PKG-INFO") or n == "PKG-INFO"), key=len)[:1]
                if meta:
                    metadata = zf.read(meta[0]).decode("utf-8", errors="replace")
                for n in names:
                    parts = PurePosixPath(n).parts
                    in_dist_info = parts and parts[0].endswith(".dist-info")
                    if n.endswith("/"):
                        continue
                    if (in_dist_info and (len(parts) > 2 and parts[1] == "licenses"
                                          or _LICENSE_NAME.match(parts[-1]))) \
                            or (len(parts) <= 2 and _LICENSE_NAME.match(parts[-1])):
                        keep_license(n, zf.read(n))
        elif archive.name.endswith((".tar.gz", ".tgz")):
            with tarfile.open(archive, "r:gz") as tf:
                members = sorted((m for m in tf.getmembers() if m.isfile()), key=lambda m: m.name)
                pkg_info = sorted((m for m in members if PurePosixPath(m.name).name == "PKG-INFO"),
                                  key=lambda m: (len(PurePosixPath(m.name).parts), m.name))
                if pkg_info:
                    fh = tf.extractfile(pkg_info[0])
                    metadata = fh.read().decode("utf-8", errors="replace") if fh else ""
                for m in members:
                    parts = PurePosixPath(m.name).parts
                    if len(parts) <= 2 and _LICENSE_NAME.match(parts[-1]):
                        fh = tf.extractfile(m)
                        if fh is not None:
                            keep_license(m.name, fh.read())
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, ValueError) as exc:
        log.warning("%s: unreadable archive (%s)", archive.name, exc)

    from email.parser import HeaderParser

    header = HeaderParser().parsestr(metadata) if metadata else None
    parsed = _archive_name_version(archive.name) or (archive.name, "")
    name = (header.get("Name") if header else None) or parsed[0]
    version = (header.get("Version") if header else None) or parsed[1]
    return str(name).strip(), str(version).strip(), metadata, licenses


def _cap_files(paths: list[str], cap: int, package: str) -> set[str]:
    """The `cap` paths kept for a package: first in a stable hash order.

    Hash order rather than alphabetical, so a capped package is sampled across all its
    modules instead of only its first subpackages; it is the same on every run.
    """
    order = sorted(paths, key=lambda p: sha256_bytes(f"{package}\0{p}".encode()))
    return set(order[: max(cap, 0)])


def ingest_pypi_code(packages: list[str], raw_dir: Path, out_path: Path, license_allowlist: list[str],
                     max_files_per_package: int, max_file_bytes: int,
                     index_url: str | None = None) -> dict:
    """Download `packages` into `raw_dir` and write their allowed Python files to `out_path`.

    A distribution whose licence is unknown or not on the allowlist is excluded whole and
    listed with its expression in the report. Files that are not valid UTF-8 (or contain
    NUL bytes) are skipped and counted. Records are sorted by package then path; the file
    is written to a temporary name and renamed, so a crash never leaves half a corpus.

    Report fields: ``packages`` (per package: ``version``, ``license``, ``archive``,
    ``files_kept``, ``bytes_kept``, ``skipped`` reasons -> counts), ``excluded``
    (package -> licence expression or None), ``failed`` (spec -> error), ``totals``.
    """
    raw_dir, out_path = Path(raw_dir), Path(out_path)
    archives, failed = download_distributions(packages, raw_dir, index_url=index_url)
    report_packages: dict[str, dict] = {}
    excluded: dict[str, str | None] = {}
    records: list[dict] = []
    for archive in archives:
        name, version, metadata, license_files = read_distribution_metadata(archive)
        expression = spdx_from_metadata(metadata, license_files)
        if not is_allowed(expression, license_allowlist):
            excluded[name] = expression
            log.info("excluded %s %s: licence %s not allowed", name, version, expression)
            continue
        skipped: Counter = Counter()
        decoded: dict[str, str] = {}
        for path, data in iter_python_files(archive, max_file_bytes, skipped):
            if b"\x00" in data:
                skipped["binary"] += 1
                continue
            try:
                decoded[path] = data.decode("utf-8")
            except UnicodeDecodeError:
                skipped["not_utf8"] += 1
                continue
        kept = _cap_files(sorted(decoded), max_files_per_package, name)
        skipped["over_cap"] += len(decoded) - len(kept)
        attribution = f"{name} {version}, {expression}, from PyPI"
        url = f"https://pypi.org/project/{name}/{version}/"
        n_bytes = 0
        for path in sorted(kept):
            text = decoded[path]
            raw = text.encode("utf-8")
            n_bytes += len(raw)
            records.append({
                "text": text, "kind": "code", "language": "python", "source": "pypi",
                "package": name, "version": version, "path": path, "license": expression,
                "attribution": attribution, "sha256": sha256_bytes(raw), "url": url,
            })
        report_packages[name] = {
            "version": version, "license": expression, "archive": archive.name,
            "files_kept": len(kept), "bytes_kept": n_bytes,
            "skipped": {k: v for k, v in sorted(skipped.items()) if v},
        }

    records.sort(key=lambda r: (r["package"].lower(), r["package"], r["path"]))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, out_path)

    total_skipped: Counter = Counter()
    for info in report_packages.values():
        total_skipped.update(info["skipped"])
    return {
        "packages": dict(sorted(report_packages.items())),
        "excluded": dict(sorted(excluded.items())),
        "failed": dict(sorted(failed.items())),
        "totals": {
            "packages_requested": len(packages),
            "packages_downloaded": len(archives),
            "packages_kept": len(report_packages),
            "packages_excluded": len(excluded),
            "packages_failed": len(failed),
            "files_kept": len(records),
            "bytes_kept": sum(i["bytes_kept"] for i in report_packages.values()),
            "skipped": dict(sorted(total_skipped.items())),
        },
    }
