"""Golden pairs from a fixed source string."""

from __future__ import annotations

import ast
from collections import Counter

from _data_fixtures import CORE_PY
from apex_models.data.code_pairs import extract_functions, make_pairs

SOURCE = '''import functools


@functools.lru_cache(maxsize=None)
def parse_config(path, strict=False):
    """Parse a configuration file, e.g. an INI file. Returns a dict.

    More details here.
    """
    with open(path) as fh:
        text = fh.read()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


class Store:
    """A tiny key-value store."""

    def __init__(self):
        """Create an empty store with no keys at all."""
        self.data = {}

    def get_value(self, key, default=None):
        """
        Look up a key and return its value
        or the default.
        """
        value = self.data.get(key, default)
        return value

    def only_doc(self):
        """Do nothing at all, on purpose."""


def outer():
    """Outer function with a nested one inside it."""
    def inner():
        """Nested: not extracted."""
        return 1
    return inner()


def test_parse_config_reads_keys():
    """Check that parsing the config file reads keys."""
    assert parse_config
    assert True
    assert 1


def deprecated_thing(x):
    """Deprecated: use parse_config instead of this."""
    y = x
    z = y
    return z


def bad syntax here
'''

VALID = SOURCE.replace("def bad syntax here\n", "")


def test_syntax_error_gives_empty():
    assert extract_functions(SOURCE) == []


def test_extract_golden():
    fns = extract_functions(VALID, "pkg/mod.py")
    assert [f["qualname"] for f in fns] == ["parse_config", "Store.__init__", "Store.get_value", "Store.only_doc",
                                            "outer", "test_parse_config_reads_keys", "deprecated_thing"]
    by = {f["qualname"]: f for f in fns}
    assert by["parse_config"]["summary"] == "Parse a configuration file, e.g. an INI file"
    assert by["Store.get_value"]["summary"] == "Look up a key and return its value or the default"
    assert by["Store.get_value"]["name"] == "get_value"
    assert by["parse_config"]["code"].startswith("@functools.lru_cache(maxsize=None)\ndef parse_config(")
    method = by["Store.get_value"]
    assert method["code"].startswith("def get_value(self, key, default=None):\n    \"\"\"")
    assert method["code_nodoc"] == ("def get_value(self, key, default=None):\n"
                                    "    value = self.data.get(key, default)\n    return value\n")
    assert by["Store.only_doc"]["code_nodoc"] == "def only_doc(self):\n    pass\n"
    for f in fns:
        ast.parse(f["code"])
        nodoc = ast.parse(f["code_nodoc"]).body[0]
        assert ast.get_docstring(nodoc) is None
    assert "inner" not in by


def test_make_pairs_filters_and_fields():
    records = [{"text": VALID, "package": "pkg", "version": "1.0", "path": "pkg/mod.py", "license": "MIT",
                "source": "pypi", "attribution": "pkg 1.0, MIT, from PyPI"},
               {"text": CORE_PY, "package": "fixturepkg", "version": "1.0", "path": "fixturepkg/core.py",
                "license": "MIT", "source": "pypi", "attribution": "fixturepkg 1.0, MIT, from PyPI"}]
    stats = Counter()
    pairs = make_pairs(records, min_code_lines=3, max_code_chars=4000, min_query_words=3,
                       keep_docstring_fraction=0.5, seed=0, stats=stats)
    assert [(p["package"], p["qualname"], p["query"]) for p in pairs] == [
        ("pkg", "parse_config", "Parse a configuration file, e.g. an INI file"),
        ("pkg", "Store.get_value", "Look up a key and return its value or the default"),
        ("pkg", "outer", "Outer function with a nested one inside it"),
        ("fixturepkg", "add_numbers", "Add two numbers and return the sum"),
        ("fixturepkg", "read_text_file", "Read a whole text file into a string"),
        ("fixturepkg", "Greeter.greet_person", "Build a friendly greeting for the given name"),
    ]
    assert stats["private"] == 2 and stats["test"] == 1 and stats["bad_summary"] == 1
    assert stats["too_short"] == 1  # Store.only_doc
    p = pairs[0]
    assert set(p) == {"query", "code", "package", "version", "path", "qualname", "license", "source",
                      "attribution", "docstring_kept", "sha256"}
    assert p["license"] == "MIT" and p["source"] == "pypi" and p["version"] == "1.0"
    for pair in pairs:
        own_doc = ast.get_docstring(ast.parse(pair["code"]).body[0])
        assert (own_doc is not None) == pair["docstring_kept"]
    again = make_pairs(records, 3, 4000, 3, 0.5, seed=0)
    assert again == pairs
    assert all(p["docstring_kept"] for p in make_pairs(records, 3, 4000, 3, 1.0, seed=0))
    assert not any(p["docstring_kept"] for p in make_pairs(records, 3, 4000, 3, 0.0, seed=0))


def test_make_pairs_dedups_identical_code():
    rec = {"text": CORE_PY, "package": "a", "version": "1", "path": "a/core.py", "license": "MIT"}
    stats = Counter()
    pairs = make_pairs([rec, dict(rec, package="b", path="b/core.py")], 3, 4000, 3, 0.5, 0, stats)
    assert len(pairs) == 3 and stats["duplicate_code"] == 3
