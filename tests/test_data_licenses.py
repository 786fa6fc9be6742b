"""Licence resolution on METADATA shaped like real wheels'."""

from apex_models.data.licenses import is_allowed, spdx_from_metadata

ALLOW = ["MIT", "BSD-2-Clause", "BSD-3-Clause", "Apache-2.0", "ISC", "PSF-2.0", "MPL-2.0", "Unlicense", "0BSD"]

CLASSIFIER_ONLY = """Metadata-Version: 2.1
Name: six
Version: 1.16.0
Summary: Python 2 and 3 compatibility utilities
Home-page: https://github.com/benjaminp/six
Author: Benjamin Peterson
License: MIT
Platform: UNKNOWN
Classifier: Development Status :: 5 - Production/Stable
Classifier: Programming Language :: Python :: 3
Classifier: Intended Audience :: Developers
Classifier: License :: OSI Approved :: MIT License
Classifier: Topic :: Utilities
Requires-Python: >=2.7, !=3.0.*

Six is a Python 2 and 3 compatibility library.
"""

EXPRESSION_ONLY = """Metadata-Version: 2.4
Name: modernpkg
Version: 1.0
License-Expression: BSD-3-Clause
License-File: LICENSE.txt

Body.
"""

DUAL = """Metadata-Version: 2.1
Name: packaging
Version: 24.2
Classifier: License :: OSI Approved :: Apache Software License
Classifier: License :: OSI Approved :: BSD License
Classifier: Programming Language :: Python
"""

GPL = """Metadata-Version: 2.1
Name: gplpkg
Version: 0.1
License: GPLv3
Classifier: License :: OSI Approved :: GNU General Public License v3 (GPLv3)
"""

UNKNOWN = """Metadata-Version: 2.1
Name: mystery
Version: 0.1
License: Proprietary, see the website
"""

FIELD_ONLY = """Metadata-Version: 2.1
Name: old
Version: 0.1
License: Apache License, Version 2.0
"""

MIT_TEXT = """Copyright (c) 2020 Someone

Permission is hereby granted, free of charge, to any person obtaining a copy
of this software and associated documentation files (the "Software"), to deal
in the Software without restriction ... The above copyright notice and this
permission notice shall be included in all copies or substantial portions of the Software.
"""


def test_classifier_only():
    assert spdx_from_metadata(CLASSIFIER_ONLY) == "MIT"


def test_expression_wins():
    assert spdx_from_metadata(EXPRESSION_ONLY) == "BSD-3-Clause"


def test_dual_classifiers_join_with_or():
    expr = spdx_from_metadata(DUAL)
    assert expr == "Apache-2.0 OR BSD-3-Clause"
    assert is_allowed(expr, ALLOW)


def test_gpl_excluded():
    expr = spdx_from_metadata(GPL)
    assert expr == "GPL-3.0-only"
    assert not is_allowed(expr, ALLOW)


def test_unknown_is_none_and_refused():
    assert spdx_from_metadata(UNKNOWN) is None
    assert not is_allowed(None, ALLOW)


def test_license_field_and_file_text():
    assert spdx_from_metadata(FIELD_ONLY) == "Apache-2.0"
    bare = "Metadata-Version: 2.1\nName: x\nVersion: 1\n"
    assert spdx_from_metadata(bare) is None
    assert spdx_from_metadata(bare, {"LICENSE": MIT_TEXT}) == "MIT"
    for short, spdx in [("MIT", "MIT"), ("BSD", "BSD-3-Clause"), ("Apache 2.0", "Apache-2.0"),
                        ("BSD-3-Clause", "BSD-3-Clause")]:
        assert spdx_from_metadata(bare + f"License: {short}\n") == spdx


def test_is_allowed_expressions():
    assert is_allowed("mit", ALLOW)
    assert is_allowed("GPL-3.0-only OR MIT", ALLOW)
    assert not is_allowed("GPL-3.0-only AND MIT", ALLOW)
    assert is_allowed("(MIT AND BSD-3-Clause) OR GPL-2.0-only", ALLOW)
    assert not is_allowed("(MIT OR GPL-2.0-only) AND LGPL-3.0-only", ALLOW)
    assert is_allowed("Apache-2.0 WITH LLVM-exception", ALLOW)
    assert not is_allowed("", ALLOW)
    assert not is_allowed("Some custom licence", ALLOW)


def test_is_allowed_prefix_patterns():
    text = ["MIT", "CC-BY-*", "CC-BY-SA-*"]
    assert is_allowed("CC-BY-SA-3.0 AND CC-BY-SA-4.0", text)
    assert is_allowed("cc-by-4.0", text)
    assert not is_allowed("CC-BY-NC-4.0", ["CC-BY-SA-*"])
    assert not is_allowed("CC-BY-NC-SA-4.0", ["MIT", "CC-BY-SA-*"])
    assert not is_allowed("GPL-3.0-only", text)
