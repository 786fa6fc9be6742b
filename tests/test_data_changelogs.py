"""Changelog parsing: Debian changelogs and CHANGELOG/NEWS files as (version, changes)."""

from __future__ import annotations

import gzip
from pathlib import Path

from apex_models.data.changelogs import (CHANGELOG_NAMES, debian_changelog_records, parse_debian_changelog,
                                         parse_news_changelog)
from apex_models.data.records import Skips

DEBIAN = """python3.11 (3.11.2-6+deb12u2) bookworm-security; urgency=medium

  [ Jane Maintainer ]
  * Fix CVE-2024-0450: protect zipfile from "quoted-overlap"
    zipbomb.
  * Refresh patches.

 -- Jane Maintainer <jane@debian.example>  Mon, 03 Jun 2024 10:00:00 +0200

python3.11 (3.11.2-6) unstable; urgency=low

  * Build with -ffat-lto-objects.

 -- Someone <someone@debian.example>  Sat, 04 Mar 2023 12:00:00 +0100
"""

NEWS_MD = """# Changelog

## [2.1.0] - 2024-05-01

### Fixed
- Pooling no longer leaks connections
  on Alpine.
- `retry()` honours the timeout.

## v2.0.0

* Drop Python 3.8.

Unreleased notes without version.
"""

CHANGES_RST = """Changes
=======

Version 3.1.2
-------------

Released 2024-01-01

-   Fix a regression in the CLI.
-   Document the new option.

Version 3.1.1
-------------

-   Security fix.
"""


def test_parse_debian_changelog() -> None:
    entries = parse_debian_changelog(DEBIAN)
    assert [e["version"] for e in entries] == ["3.11.2-6+deb12u2", "3.11.2-6"]
    assert entries[0]["changes"] == ['Fix CVE-2024-0450: protect zipfile from "quoted-overlap" zipbomb.',
                                     "Refresh patches."]
    assert entries[0]["distribution"] == "bookworm-security" and entries[0]["urgency"] == "medium"
    assert entries[1]["date"] == "Sat, 04 Mar 2023 12:00:00 +0100"


def test_parse_news_changelogs() -> None:
    assert parse_news_changelog(NEWS_MD) == [
        ("2.1.0", ["Pooling no longer leaks connections on Alpine.", "`retry()` honours the timeout."]),
        ("2.0.0", ["Drop Python 3.8."])]
    assert parse_news_changelog(CHANGES_RST) == [
        ("3.1.2", ["Fix a regression in the CLI.", "Document the new option."]), ("3.1.1", ["Security fix."])]
    assert CHANGELOG_NAMES.match("CHANGES.rst") and CHANGELOG_NAMES.match("NEWS") and not CHANGELOG_NAMES.match("x.md")


def test_debian_changelog_records(tmp_path: Path) -> None:
    doc = tmp_path / "usr" / "share" / "doc"
    (doc / "python3.11-doc").mkdir(parents=True)
    (doc / "python3.11-doc" / "changelog.Debian.gz").write_bytes(gzip.compress(DEBIAN.encode()))
    (doc / "broken").mkdir()
    (doc / "broken" / "changelog.Debian.gz").write_bytes(gzip.compress(DEBIAN.encode())[:30])
    skips = Skips()
    records = list(debian_changelog_records(tmp_path, "PSF-2.0", "python3.11-doc Debian changelog, PSF-2.0", skips))
    assert [r["version"] for r in records] == ["3.11.2-6+deb12u2", "3.11.2-6"]
    assert records[0]["text"].startswith("python3.11 3.11.2-6+deb12u2\n- Fix CVE-2024-0450")
    assert records[0]["kind"] == "changelog" and records[0]["license"] == "PSF-2.0"
    assert skips.counts["unreadable"] == 1
