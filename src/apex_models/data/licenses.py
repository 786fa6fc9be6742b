"""Licence resolution for downloaded distributions, and the allowlist check.

Only permissively licensed code may enter a training set, and every record carries its
licence so the dataset card and NOTICE file can attribute it. Python packaging states a
licence in up to four places of varying quality; :func:`spdx_from_metadata` tries them
from the most to the least reliable and returns ``None`` rather than guess.
"""

from __future__ import annotations

import re
from email.parser import HeaderParser

# Trove classifier suffix (after "License :: ") -> SPDX id. Checked as exact matches of
# the classifier's last segments, most specific first.
_CLASSIFIERS: dict[str, str] = {
    "OSI Approved :: MIT License": "MIT",
    "OSI Approved :: MIT No Attribution License (MIT-0)": "MIT-0",
    "OSI Approved :: BSD License": "BSD-3-Clause",
    "OSI Approved :: Apache Software License": "Apache-2.0",
    "OSI Approved :: Python Software Foundation License": "PSF-2.0",
    "OSI Approved :: Mozilla Public License 2.0 (MPL 2.0)": "MPL-2.0",
    "OSI Approved :: ISC License (ISCL)": "ISC",
    "OSI Approved :: The Unlicense (Unlicense)": "Unlicense",
    "OSI Approved :: Zero-Clause BSD (0BSD)": "0BSD",
    "OSI Approved :: zlib/libpng License": "Zlib",
    "OSI Approved :: GNU General Public License v2 (GPLv2)": "GPL-2.0-only",
    "OSI Approved :: GNU General Public License v2 or later (GPLv2+)": "GPL-2.0-or-later",
    "OSI Approved :: GNU General Public License v3 (GPLv3)": "GPL-3.0-only",
    "OSI Approved :: GNU General Public License v3 or later (GPLv3+)": "GPL-3.0-or-later",
    "OSI Approved :: GNU Lesser General Public License v2 (LGPLv2)": "LGPL-2.0-only",
    "OSI Approved :: GNU Lesser General Public License v2 or later (LGPLv2+)": "LGPL-2.0-or-later",
    "OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)": "LGPL-3.0-only",
    "OSI Approved :: GNU Lesser General Public License v3 or later (LGPLv3+)": "LGPL-3.0-or-later",
    "OSI Approved :: GNU Affero General Public License v3": "AGPL-3.0-only",
    "OSI Approved :: GNU Affero General Public License v3 or later (AGPLv3+)": "AGPL-3.0-or-later",
    "OSI Approved :: Eclipse Public License 2.0 (EPL-2.0)": "EPL-2.0",
    "CC0 1.0 Universal (CC0 1.0) Public Domain Dedication": "CC0-1.0",
}

# Short free-text `License:` values (normalised: lower-case, punctuation -> space) -> SPDX.
_SHORT_NAMES: dict[str, str] = {
    "mit": "MIT",
    "mit license": "MIT",
    "the mit license": "MIT",
    "mit licence": "MIT",
    "expat": "MIT",
    "bsd": "BSD-3-Clause",
    "bsd license": "BSD-3-Clause",
    "new bsd": "BSD-3-Clause",
    "new bsd license": "BSD-3-Clause",
    "modified bsd": "BSD-3-Clause",
    "3 clause bsd": "BSD-3-Clause",
    "bsd 3 clause": "BSD-3-Clause",
    "bsd 3 clause license": "BSD-3-Clause",
    "simplified bsd": "BSD-2-Clause",
    "2 clause bsd": "BSD-2-Clause",
    "bsd 2 clause": "BSD-2-Clause",
    "bsd 2 clause license": "BSD-2-Clause",
    "apache": "Apache-2.0",
    "apache 2": "Apache-2.0",
    "apache 2 0": "Apache-2.0",
    "apache2": "Apache-2.0",
    "apache license 2 0": "Apache-2.0",
    "apache license version 2 0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "apache software license 2 0": "Apache-2.0",
    "asl 2 0": "Apache-2.0",
    "isc": "ISC",
    "isc license": "ISC",
    "psf": "PSF-2.0",
    "psf license": "PSF-2.0",
    "python software foundation license": "PSF-2.0",
    "mpl 2 0": "MPL-2.0",
    "mozilla public license 2 0": "MPL-2.0",
    "unlicense": "Unlicense",
    "the unlicense": "Unlicense",
    "0bsd": "0BSD",
    "gpl": "GPL-3.0-or-later",
    "gplv2": "GPL-2.0-only",
    "gplv3": "GPL-3.0-only",
    "lgpl": "LGPL-3.0-or-later",
    "agpl": "AGPL-3.0-only",
}

_SPDX_TOKEN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.\-+]*$")


def _norm_name(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


def _from_license_text(text: str) -> str | None:
    """Recognise the three common permissive licence files by their key sentences."""
    flat = " ".join(text.split()).lower()
    if "apache license" in flat and "version 2.0" in flat:
        return "Apache-2.0"
    if "permission is hereby granted, free of charge" in flat and "the above copyright notice" in flat:
        return "MIT"
    if "redistribution and use in source and binary forms" in flat:
        third = "neither the name" in flat or "names of its contributors" in flat
        return "BSD-3-Clause" if third else "BSD-2-Clause"
    if "permission to use, copy, modify, and/or distribute this software" in flat:
        return "ISC"
    if "this is free and unencumbered software released into the public domain" in flat:
        return "Unlicense"
    if "mozilla public license version 2.0" in flat or "mozilla public license, version 2.0" in flat:
        return "MPL-2.0"
    if "gnu general public license" in flat:
        return "GPL-3.0-or-later" if "version 3" in flat else "GPL-2.0-or-later"
    return None


def spdx_from_metadata(metadata_text: str, license_texts: dict[str, str] | None = None) -> str | None:
    """Resolve a distribution's licence as an SPDX expression, or None when unknown.

    Order (most to least reliable): the PEP 639 ``License-Expression`` field, trove
    classifiers (several distinct ones are joined with ``OR``: packages list every licence
    they offer), a short recognisable ``License:`` field (long ones are usually the whole
    licence text, handled by the heuristics), then heuristics on the licence files.
    """
    msg = HeaderParser().parsestr(metadata_text or "")
    expression = (msg.get("License-Expression") or "").strip()
    if expression:
        return expression

    found: list[str] = []
    for classifier in msg.get_all("Classifier") or []:
        parts = [p.strip() for p in classifier.split("::")]
        if not parts or parts[0] != "License":
            continue
        spdx = _CLASSIFIERS.get(" :: ".join(parts[1:]))
        if spdx and spdx not in found:
            found.append(spdx)
    if found:
        return found[0] if len(found) == 1 else " OR ".join(found)

    field = (msg.get("License") or "").strip()
    if field and "\n" not in field and len(field) <= 80:
        if field in _SHORT_NAMES.values():
            return field
        spdx = _SHORT_NAMES.get(_norm_name(field))
        if spdx:
            return spdx
        if _norm_name(field).startswith("apache license version 2"):
            return "Apache-2.0"
    if field and len(field) > 80:
        spdx = _from_license_text(field)
        if spdx:
            return spdx

    for name in sorted(license_texts or {}):
        spdx = _from_license_text((license_texts or {})[name])
        if spdx:
            return spdx
    return None


def _split_top(expr: str, op: str) -> list[str]:
    """Split `expr` on ` op ` outside parentheses (case-insensitive)."""
    parts, depth, start = [], 0, 0
    tokens = re.split(r"(\(|\)|\s+)", expr)
    pos = 0
    for tok in tokens:
        if tok == "(":
            depth += 1
        elif tok == ")":
            depth -= 1
        elif depth == 0 and tok.upper() == op:
            parts.append(expr[start:pos])
            start = pos + len(tok)
        pos += len(tok)
    parts.append(expr[start:])
    return [p.strip() for p in parts]


def _strip_parens(expr: str) -> str:
    expr = expr.strip()
    while expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, ch in enumerate(expr):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0 and i < len(expr) - 1:
                return expr  # "(A) OR (B)": the outer parentheses are not one group
        expr = expr[1:-1].strip()
    return expr


def is_allowed(expression: str | None, allowlist: list[str]) -> bool:
    """True when the SPDX expression lets us use the code under an allowlisted licence.

    ``A OR B`` is allowed if either side is (the licensee chooses); ``A AND B`` only if
    both are; ``WITH`` exceptions only widen a licence, so they are dropped. Matching is
    case-insensitive; an allowlist entry ending in ``*`` is a prefix (``CC-BY-*`` allows
    ``CC-BY-4.0`` and ``CC-BY-SA-3.0``); anything unparsable or unknown is refused.
    """
    if not expression or not expression.strip():
        return False
    allowed = {a.strip().lower() for a in allowlist}
    expr = _strip_parens(expression)
    ors = _split_top(expr, "OR")
    if len(ors) > 1:
        return any(is_allowed(part, allowlist) for part in ors)
    ands = _split_top(expr, "AND")
    if len(ands) > 1:
        return all(is_allowed(part, allowlist) for part in ands)
    single = re.split(r"\s+with\s+", expr, flags=re.IGNORECASE)[0].strip()
    if not _SPDX_TOKEN.match(single):
        return False
    single = single.lower()
    return single in allowed or any(a.endswith("*") and single.startswith(a[:-1]) for a in allowed)
