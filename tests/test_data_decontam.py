"""Decontamination against miniature benchmark folders shaped like shared/benchmarks."""

from __future__ import annotations

import logging

from _data_fixtures import COSQA_CODE, COSQA_CODE_2, make_shared
from apex_models.data.decontam import Decontaminator, load_benchmark_texts, normalize_code, normalize_text

ALL = ["cosqa", "conala", "intent", "qa"]


def test_normalize_code_ignores_layout_comments_docstrings():
    reformatted = ('def is_iterable_but_not_string( obj ):  # check it\n'
                   '    """Other docstring entirely."""\n\n'
                   '    # a comment\n'
                   "    return hasattr(obj, '__iter__') and not isinstance(obj, str) \\\n"
                   '        and not isinstance(obj, bytes)\n')
    assert normalize_code(reformatted) == normalize_code(COSQA_CODE)
    assert "Determine" not in normalize_code(COSQA_CODE)
    # A fragment the tokenizer rejects still normalises, through the regex path.
    assert normalize_code('foo(  """doc"""\n# c\n') == "foo ("
    assert normalize_text("  How do I Reverse a string?? ") == "how do i reverse a string"


def test_load_benchmark_texts(tmp_path):
    bench = load_benchmark_texts(make_shared(tmp_path / "shared"), ALL)
    assert bench.missing == []
    assert normalize_code(COSQA_CODE) in bench.codes and normalize_code(COSQA_CODE_2) in bench.codes
    assert "python check if a variable is iterable" in bench.texts
    assert "send a signal `signal.sigusr1` to the current process" in bench.texts
    assert "read a whole text file into a string" in bench.texts
    assert 'what is "backprop' in bench.texts  # qa title, end punctuation stripped
    assert normalize_code("os.kill(os.getpid(), signal.SIGUSR1)") in bench.codes


def test_missing_shared_folder_warns(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        bench = load_benchmark_texts(tmp_path / "nowhere", ALL)
    assert bench.codes == set() and bench.texts == set() and bench.missing == ALL
    assert "cosqa" in caplog.text
    assert Decontaminator(bench).is_contaminated("anything at all here", "def f():\n    return 1\n") is None


def test_exact_near_and_clean(tmp_path):
    deco = Decontaminator(load_benchmark_texts(make_shared(tmp_path / "shared"), ALL))
    exact = ('def is_iterable_but_not_string(obj):\n'
             '    # no docstring here, a comment instead\n'
             "    return hasattr(obj, '__iter__') and not isinstance(obj, str) and not isinstance(obj, bytes)\n")
    assert deco.is_contaminated("unrelated summary words here", exact) == "exact-code"
    near = COSQA_CODE_2.replace("result", "out", 1).replace('"""Flatten a nested list into one flat list of values."""',
                                                            "# flatten")
    near = near.replace("return result", "return result  # done")
    assert normalize_code(near) != normalize_code(COSQA_CODE_2)
    assert deco.is_contaminated("unrelated summary words here", near) == "near-code"
    clean = ('def parse_header_line(line):\n    """Split an HTTP header line."""\n'
             '    name, _, value = line.partition(":")\n    return name.strip().lower(), value.strip()\n')
    assert deco.is_contaminated("Split an HTTP header line into name and value", clean) is None
    assert deco.is_contaminated("Python check if a variable is iterable.", clean) == "exact-query"
    assert deco.is_contaminated("python check if variable is iterable", clean) == "near-query"
