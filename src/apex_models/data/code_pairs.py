"""(query, code) pairs mined from documented Python functions.

A docstring's first sentence is what a developer would type to find the function
("Read a whole text file into a string"), so each documented function gives one
retrieval pair for free. CoSQA's corpus keeps docstrings in the code while real code
search often meets undocumented code, so each pair's code keeps or drops its docstring
by a deterministic coin (``keep_docstring_fraction``).

Pair record (also used by :mod:`apex_models.data.conala` and the dataset splits):

``query``            the docstring's summary sentence
``code``             the function's source, with or without its docstring
``package``          distribution name (``"conala"`` for CoNaLa pairs)
``version``          distribution version (``""`` for CoNaLa)
``path``             file inside the archive (``so-question:<id>`` for CoNaLa)
``qualname``         ``func`` or ``Class.method`` (``""`` for CoNaLa)
``license``          SPDX expression of the source
``source``           ``"pypi"`` or ``"conala"``
``attribution``      credit line carried from the file record
``docstring_kept``   whether ``code`` still contains the docstring
``sha256``           sha256 of ``query + "\\0" + code`` (UTF-8): the pair's identity
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from typing import Iterable

from apex_models.hashing import sha256_bytes

_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+$")
# A sentence ends at ". " unless the period closes a common abbreviation.
_SENTENCE_END = re.compile(r"(?<!\be\.g)(?<!\bi\.e)(?<!\betc)(?<!\bvs)\.(?:\s|$)")
_BAD_SUMMARY_PREFIXES = (":param", ":return", ":rtype", ":type", ":raises", "todo", "fixme", "xxx",
                         "deprecated", ".. ", "args:", "arguments:", "parameters", "returns:",
                         ">>>", "@", "see ", "note:", "internal", "hack", "copied from", "alias for",
                         "backward")
_TEST_DIRS = {"tests", "test", "testing"}


def _summary(docstring: str) -> str:
    """First sentence of the first paragraph, whitespace-collapsed, without its final period."""
    first_para = re.split(r"\n\s*\n", docstring.strip(), maxsplit=1)[0]
    text = " ".join(first_para.split())
    match = _SENTENCE_END.search(text)
    if match:
        text = text[: match.start()]
    return text.rstrip(". ").strip()


def _lines(source: str) -> list[str]:
    """Source lines with their endings, split exactly as the tokenizer counts them."""
    return _LINE.findall(source)


def _strip_indent(lines: list[str], indent: str) -> str:
    """Remove the definition's own indentation, leaving less-indented string lines alone."""
    return "".join(line[len(indent):] if line.startswith(indent) else line for line in lines)


def _function_entry(node: ast.FunctionDef | ast.AsyncFunctionDef, qualname: str,
                    lines: list[str]) -> dict | None:
    docstring = ast.get_docstring(node, clean=True)
    if not docstring or not docstring.strip():
        return None
    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
    end = node.end_lineno or node.lineno
    first = lines[start - 1]
    indent = first[: len(first) - len(first.lstrip(" \t"))]
    code_lines = lines[start - 1:end]
    code = _strip_indent(code_lines, indent).rstrip() + "\n"

    doc_node = node.body[0]
    if doc_node.lineno == node.lineno or doc_node.end_lineno is None:
        # One-line definition ("def f(): 'doc'"): fall back to unparsing.
        bare = ast.parse(ast.unparse(node)).body[0]
        bare.body = bare.body[1:] or [ast.Pass()]
        code_nodoc = ast.unparse(bare) + "\n"
    else:
        rel_start, rel_end = doc_node.lineno - start, doc_node.end_lineno - start
        body_after = code_lines[rel_end + 1:]
        while body_after and not body_after[0].strip() and len(node.body) > 1:
            body_after = body_after[1:]
        doc_line = code_lines[rel_start]
        if len(node.body) == 1:
            doc_indent = doc_line[: len(doc_line) - len(doc_line.lstrip(" \t"))]
            body_after = [doc_indent + "pass\n"] + body_after
        code_nodoc = _strip_indent(code_lines[:rel_start] + body_after, indent).rstrip() + "\n"
        try:
            ast.parse(code_nodoc)
        except SyntaxError:
            bare = ast.parse(ast.unparse(node)).body[0]
            bare.body = bare.body[1:] or [ast.Pass()]
            code_nodoc = ast.unparse(bare) + "\n"
    return {
        "name": node.name,
        "qualname": qualname,
        "lineno": node.lineno,
        "docstring": docstring,
        "summary": _summary(docstring),
        "code": code,
        "code_nodoc": code_nodoc,
    }


def extract_functions(source: str, path: str = "") -> list[dict]:
    """Documented module-level functions and class methods of a Python source, in file order.

    Nested functions are left out: they are implementation details whose docstrings rarely
    describe a searchable task. Code that does not parse gives []. Each entry: ``name``,
    ``qualname`` (``Class.method`` for methods), ``lineno``, ``docstring`` (cleaned),
    ``summary`` (first sentence), ``code`` (exact source with decorators, dedented) and
    ``code_nodoc`` (the same without the docstring; ``pass`` if the body became empty).
    `path` only labels warnings.
    """
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError):
        return []
    lines = _lines(source)
    out: list[dict] = []
    func_types = (ast.FunctionDef, ast.AsyncFunctionDef)
    for node in tree.body:
        if isinstance(node, func_types):
            entry = _function_entry(node, node.name, lines)
            if entry:
                out.append(entry)
        elif isinstance(node, ast.ClassDef):
            for child in node.body:
                if isinstance(child, func_types):
                    entry = _function_entry(child, f"{node.name}.{child.name}", lines)
                    if entry:
                        out.append(entry)
    return out


def _is_test(path: str, qualname: str) -> bool:
    parts = path.replace("\\", "/").split("/")
    name = qualname.split(".")[-1]
    cls = qualname.split(".")[0] if "." in qualname else ""
    return (name.startswith("test") or cls.startswith("Test") or any(p in _TEST_DIRS for p in parts[:-1])
            or parts[-1].startswith("test_") or parts[-1] == "conftest.py")


def _keep_docstring(seed: int, package: str, qualname: str, fraction: float) -> bool:
    """Deterministic coin: the same function gets the same form on every run and machine."""
    digest = sha256_bytes(f"{seed}\0{package}\0{qualname}".encode())
    return int(digest[:15], 16) / float(16**15) < fraction


def pair_sha256(query: str, code: str) -> str:
    """The pair's identity: sha256 of query, NUL, code (UTF-8)."""
    return sha256_bytes(f"{query}\0{code}".encode("utf-8"))


def make_pairs(records: Iterable[dict], min_code_lines: int, max_code_chars: int, min_query_words: int,
               keep_docstring_fraction: float, seed: int, stats: Counter | None = None) -> list[dict]:
    """Turn file records (from :func:`~apex_models.data.pypi.ingest_pypi_code`) into pairs.

    Dropped, each counted in `stats` under its reason: private and dunder functions
    (``private``; their docstrings describe internals), tests (``test``), summaries under
    `min_query_words` words or that are parameter lists, TODOs or deprecation notes
    (``bad_summary``), bodies under `min_code_lines` non-blank lines without the docstring
    (``too_short``), code over `max_code_chars` (``too_long``), and functions whose
    docstring-free code repeats one already kept (``duplicate_code``; vendored copies and
    overloads would otherwise leak between splits and over-weight one snippet).
    """
    stats = stats if stats is not None else Counter()
    seen: set[str] = set()
    pairs: list[dict] = []
    for record in records:
        path = record.get("path", "")
        for fn in extract_functions(record.get("text", ""), path):
            stats["functions"] += 1
            qualname = fn["qualname"]
            if fn["name"].startswith("_"):
                stats["private"] += 1
                continue
            if _is_test(path, qualname):
                stats["test"] += 1
                continue
            summary = fn["summary"]
            if len(summary.split()) < min_query_words or summary.lower().startswith(_BAD_SUMMARY_PREFIXES):
                stats["bad_summary"] += 1
                continue
            body_lines = [ln for ln in fn["code_nodoc"].splitlines() if ln.strip()]
            if len(body_lines) < min_code_lines:
                stats["too_short"] += 1
                continue
            if len(fn["code"]) > max_code_chars:
                stats["too_long"] += 1
                continue
            key = " ".join(fn["code_nodoc"].split())
            if key in seen:
                stats["duplicate_code"] += 1
                continue
            seen.add(key)
            package = record.get("package", "")
            keep = _keep_docstring(seed, package, qualname, keep_docstring_fraction)
            code = fn["code"] if keep else fn["code_nodoc"]
            pairs.append({
                "query": summary,
                "code": code,
                "package": package,
                "version": record.get("version", ""),
                "path": path,
                "qualname": qualname,
                "license": record.get("license"),
                "source": record.get("source", "pypi"),
                "attribution": record.get("attribution", ""),
                "docstring_kept": keep,
                "sha256": pair_sha256(summary, code),
            })
            stats["pairs"] += 1
    return pairs
