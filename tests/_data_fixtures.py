"""Small, offline fixtures shared by the data-stage tests: wheels, benchmark folders."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

CORE_PY = '''"""Fixture module."""
import os


def add_numbers(a, b):
    """Add two numbers and return the sum.

    Longer explanation that must not end up in the summary.
    """
    total = a + b
    return total


def read_text_file(path):
    """Read a whole text file into a string."""
    with open(path) as fh:
        data = fh.read()
    return data


class Greeter:
    """Says hello."""

    def greet_person(self, name):
        """Build a friendly greeting for the given name."""
        text = "hello " + name
        return text.strip()


def no_docstring(x):
    y = x * 2
    z = y + 1
    return z


def _private_helper(x):
    """A private helper that should be dropped."""
    y = x * 2
    return y
'''

TEST_PY = '''def test_add_numbers():
    """Check that adding two numbers works fine."""
    assert 1 + 1 == 2
    assert 2 + 2 == 4
'''


def metadata_text(name: str, version: str, classifier: str) -> str:
    return (f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nSummary: fixture\n"
            f"Classifier: Programming Language :: Python :: 3\nClassifier: {classifier}\n\nA fixture.\n")


def make_wheel(dest: Path, name: str = "fixturepkg", version: str = "1.0",
               classifier: str = "License :: OSI Approved :: MIT License",
               modules: dict[str, str | bytes] | None = None) -> Path:
    """Write a minimal but well-formed wheel (METADATA, WHEEL, RECORD, modules) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}-{version}-py3-none-any.whl"
    dist_info = f"{name}-{version}.dist-info"
    if modules is None:
        modules = {
            f"{name}/__init__.py": '"""Fixture package."""\n',
            f"{name}/core.py": CORE_PY,
            f"{name}/tests/test_core.py": TEST_PY,
            f"{name}/latin1.py": "# caf\xe9\nx = 1\n".encode("latin-1"),
        }
    with zipfile.ZipFile(path, "w") as zf:
        for arc, content in modules.items():
            zf.writestr(arc, content)
        zf.writestr(f"{dist_info}/METADATA", metadata_text(name, version, classifier))
        zf.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: fixture\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{dist_info}/RECORD", "")
    return path


COSQA_CODE = '''def is_iterable_but_not_string(obj):
    """
    Determine whether or not obj is iterable but not a string (eg, a list, set, tuple etc).
    """
    return hasattr(obj, '__iter__') and not isinstance(obj, str) and not isinstance(obj, bytes)'''

COSQA_CODE_2 = '''def flatten_nested_list(items, depth=None):
    """Flatten a nested list into one flat list of values."""
    result = []
    for item in items:
        if isinstance(item, (list, tuple)) and (depth is None or depth > 0):
            result.extend(flatten_nested_list(item, None if depth is None else depth - 1))
        else:
            result.append(item)
    return result'''


def make_shared(root: Path) -> Path:
    """A miniature shared/ folder with the benchmark and corpus files the data stage reads."""
    cosqa = root / "benchmarks" / "cosqa"
    cosqa.mkdir(parents=True)
    (cosqa / "code_idx_map.txt").write_text(json.dumps({COSQA_CODE: 0, COSQA_CODE_2: 1, "def f(x):\n    return x": 2}))
    dev = [{"idx": "cosqa-dev-1", "doc": "python check if a variable is iterable", "code": COSQA_CODE,
            "retrieval_idx": 0}]
    test = [{"idx": "cosqa-test-7", "doc": "python flatten nested list", "code": COSQA_CODE_2,
             "retrieval_idx": 1}]
    (cosqa / "cosqa-retrieval-dev-500.json").write_text(json.dumps(dev))
    (cosqa / "cosqa-retrieval-test-500.json").write_text(json.dumps(test))
    conala_b = root / "benchmarks" / "conala"
    conala_b.mkdir(parents=True)
    (conala_b / "conala-test.json").write_text(json.dumps([
        {"intent": "How can I send a signal from a python program?",
         "rewritten_intent": "send a signal `signal.SIGUSR1` to the current process",
         "snippet": "os.kill(os.getpid(), signal.SIGUSR1)", "question_id": 15080500}]))
    intent = root / "benchmarks" / "intent"
    intent.mkdir(parents=True)
    (intent / "gold.jsonl").write_text(json.dumps(
        {"id": "w-1", "text": "Read a whole text file into a string", "label": "code_search",
         "source": "written", "split": "dev"}) + "\n")
    qa = root / "benchmarks" / "qa"
    qa.mkdir(parents=True)
    (qa / "site-Posts.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n<posts>\n'
        '  <row Id="1" PostTypeId="1" Title="What is &quot;backprop&quot;?" Body="&lt;p&gt;x&lt;/p&gt;" />\n'
        '  <row Id="2" PostTypeId="2" ParentId="1" Body="&lt;p&gt;answer&lt;/p&gt;" />\n</posts>\n',
        encoding="utf-8")
    corpus = root / "corpora" / "conala"
    corpus.mkdir(parents=True)
    (corpus / "conala-train.json").write_text(json.dumps([
        {"intent": "How to convert a list of multiple integers into a single integer?",
         "rewritten_intent": "convert a list of integers `x` into a single integer",
         "snippet": "r = int(''.join(map(str, x)))", "question_id": 41067960},
        {"intent": "How do I reverse a string in Python?", "rewritten_intent": None,
         "snippet": "s[::-1]", "question_id": 931092},
        {"intent": None, "rewritten_intent": None, "snippet": "pass", "question_id": 1},
        {"intent": "send a signal from python", "rewritten_intent": None,
         "snippet": "os.kill(os.getpid(),   signal.SIGUSR1)", "question_id": 15080500},
    ]))
    return root


def shared_dir_or_none() -> Path | None:
    """The real shared/ folder: $APEX_SHARED, else next to the repository; None if absent."""
    import os

    env = os.environ.get("APEX_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared"
    return path if path.is_dir() else None
