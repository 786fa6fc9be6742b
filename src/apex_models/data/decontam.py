"""Decontamination: keep every held-out benchmark text, and near copies of it, out of training.

The benchmarks' code comes from public GitHub and Stack Overflow, so the same function
can reach us again through a PyPI package, with other whitespace, comments or docstring.
Code is therefore compared after :func:`normalize_code` (exact match) and by MinHash LSH
over 5-token shingles of that normal form (near match, Jaccard >= threshold, verified
exactly on the LSH candidates); queries are compared after :func:`normalize_text`
(exact) and by word-set Jaccard (near).
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
import string
import tokenize
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

_CODE_TOKEN = re.compile(r"\w+|[^\w\s]")
_SKIP_TOKENS = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                tokenize.ENDMARKER, tokenize.ENCODING}
_LAYOUT = {tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT, tokenize.ENCODING}
BENCHMARK_NAMES = ("cosqa", "conala", "intent", "qa")


def _strip_with_tokenize(code: str) -> str:
    """Drop comments and bare string statements (docstrings) using the real tokenizer."""
    tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    kept: list[str] = []
    significant_before = tokenize.NEWLINE  # start of file counts as a fresh logical line
    for i, tok in enumerate(tokens):
        if tok.type in _SKIP_TOKENS:
            if tok.type == tokenize.NEWLINE:
                significant_before = tokenize.NEWLINE
            continue
        if tok.type == tokenize.STRING and significant_before == tokenize.NEWLINE:
            nxt = next((t for t in tokens[i + 1:] if t.type not in _LAYOUT), None)
            if nxt is None or nxt.type in (tokenize.NEWLINE, tokenize.ENDMARKER):
                continue  # a statement that is only a string: a docstring
        kept.append(tok.string)
        significant_before = tok.type
    return " ".join(kept)


def _strip_with_regex(code: str) -> str:
    """Fallback for fragments the tokenizer rejects: drop triple-quoted strings and comments."""
    code = re.sub(r"(?s)[rRbBuU]{0,2}(\"\"\"|''').*?\1", " ", code)
    code = re.sub(r"(?m)#[^\n]*$", " ", code)
    return code


def normalize_code(code: str) -> str:
    """Code without docstrings and comments, as space-separated tokens (case kept).

    Both paths end in the same regex tokenisation, so two copies compare equal whatever
    their layout, and whether or not the tokenizer accepted them.
    """
    try:
        stripped = _strip_with_tokenize(code)
    except (tokenize.TokenError, IndentationError, SyntaxError, ValueError):
        stripped = _strip_with_regex(code)
    return " ".join(_CODE_TOKEN.findall(stripped))


def normalize_text(text: str) -> str:
    """Lower-cased, whitespace-collapsed text without punctuation at either end."""
    return " ".join((text or "").lower().split()).strip(string.punctuation + " ")


@dataclass
class BenchmarkTexts:
    """Normalised benchmark contents: `codes` by :func:`normalize_code`, `texts` by
    :func:`normalize_text`; `missing` lists benchmarks whose files were not found."""

    codes: set[str] = field(default_factory=set)
    texts: set[str] = field(default_factory=set)
    missing: list[str] = field(default_factory=list)


def _add_text(bench: BenchmarkTexts, text: str | None) -> None:
    norm = normalize_text(text or "")
    if norm:
        bench.texts.add(norm)


def _add_code(bench: BenchmarkTexts, code: str | None) -> None:
    norm = normalize_code(code or "")
    if norm:
        bench.codes.add(norm)


def _load_cosqa(root: Path, bench: BenchmarkTexts) -> bool:
    folder = root / "benchmarks" / "cosqa"
    corpus = folder / "code_idx_map.txt"
    if not corpus.is_file():
        return False
    for code in json.loads(corpus.read_text(encoding="utf-8")):
        _add_code(bench, code)
    for split in ("dev", "test"):
        path = folder / f"cosqa-retrieval-{split}-500.json"
        if path.is_file():
            for row in json.loads(path.read_text(encoding="utf-8")):
                _add_text(bench, row.get("doc"))
                _add_code(bench, row.get("code"))
    return True


def _load_conala(root: Path, bench: BenchmarkTexts) -> bool:
    path = root / "benchmarks" / "conala" / "conala-test.json"
    if not path.is_file():
        return False
    for row in json.loads(path.read_text(encoding="utf-8")):
        _add_text(bench, row.get("intent"))
        _add_text(bench, row.get("rewritten_intent"))
        _add_code(bench, row.get("snippet"))
    return True


def _load_intent(root: Path, bench: BenchmarkTexts) -> bool:
    path = root / "benchmarks" / "intent" / "gold.jsonl"
    if not path.is_file():
        return False
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                _add_text(bench, json.loads(line).get("text"))
    return True


def _load_qa(root: Path, bench: BenchmarkTexts) -> bool:
    folder = root / "benchmarks" / "qa"
    files = sorted(folder.glob("*.xml")) if folder.is_dir() else []
    if not files:
        return False
    for path in files:
        # Streaming: a full Stack Exchange dump can be many GB.
        for _, elem in ET.iterparse(path, events=("end",)):
            if elem.tag == "row":
                if elem.get("PostTypeId") == "1":
                    _add_text(bench, elem.get("Title"))
                elem.clear()
    return True


_LOADERS = {"cosqa": _load_cosqa, "conala": _load_conala, "intent": _load_intent, "qa": _load_qa}


def load_benchmark_texts(shared_dir: Path, names: list[str]) -> BenchmarkTexts:
    """Collect the normalised code and texts of the named benchmarks under `shared_dir`.

    cosqa: the 6,267 corpus functions and the dev/test gold functions (codes), the queries
    (texts); conala: intents and rewritten intents (texts), snippets (codes); intent: the
    gold queries; qa: question titles of every ``benchmarks/qa/*.xml`` Posts dump. A
    benchmark that is absent is a warning and is listed in ``missing``: the dataset stage
    reports it rather than failing where a benchmark is not installed.
    """
    bench = BenchmarkTexts()
    root = Path(shared_dir)
    for name in names:
        loader = _LOADERS.get(name)
        if loader is None:
            log.warning("unknown benchmark %r: not decontaminated against", name)
            bench.missing.append(name)
            continue
        try:
            found = loader(root, bench)
        except (OSError, ValueError, ET.ParseError) as exc:
            log.warning("benchmark %s unreadable (%s): not decontaminated against", name, exc)
            found = False
        if not found:
            log.warning("benchmark %s not found under %s: not decontaminated against", name, root)
            bench.missing.append(name)
    return bench


def _shingles(normalized: str, n: int = 5) -> set[str]:
    tokens = normalized.split()
    if len(tokens) <= n:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def _jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


class Decontaminator:
    """Answers "is this (query, code) pair a copy of a benchmark item?".

    Holds the benchmark's MinHash LSH index (state worth building once per dataset run).
    `threshold` is the code Jaccard over 5-token shingles above which a function counts as
    a near copy; `query_threshold` the word-set Jaccard for queries of at least
    `min_query_words` words (shorter ones are only matched exactly: two short queries
    share most words by chance).
    """

    def __init__(self, bench: BenchmarkTexts, threshold: float = 0.8, num_perm: int = 128,
                 query_threshold: float = 0.8, min_query_words: int = 5, seed: int = 1):
        from datasketch import MinHashLSH

        self.bench = bench
        self.threshold = threshold
        self.query_threshold = query_threshold
        self.min_query_words = min_query_words
        self.num_perm = num_perm
        self.seed = seed
        self._code_shingles: dict[str, set[str]] = {}
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        for i, code in enumerate(sorted(bench.codes)):
            shingles = _shingles(code)
            key = f"c{i}"
            self._code_shingles[key] = shingles
            self._lsh.insert(key, self._minhash(shingles))
        self._query_sets: list[frozenset[str]] = []
        self._word_sets: dict[str, list[int]] = {}
        for text in sorted(bench.texts):
            words = frozenset(text.split())
            if len(words) >= min_query_words:
                for w in words:
                    self._word_sets.setdefault(w, []).append(len(self._query_sets))
                self._query_sets.append(words)

    def _minhash(self, shingles: set[str]):
        from datasketch import MinHash

        mh = MinHash(num_perm=self.num_perm, seed=self.seed)
        mh.update_batch([s.encode("utf-8") for s in sorted(shingles)])
        return mh

    def near_code(self, normalized: str) -> bool:
        """LSH candidates, confirmed with the exact shingle Jaccard."""
        shingles = _shingles(normalized)
        if not shingles or not self._code_shingles:
            return False
        for key in self._lsh.query(self._minhash(shingles)):
            if _jaccard(shingles, self._code_shingles[key]) >= self.threshold:
                return True
        return False

    def near_query(self, normalized: str) -> bool:
        words = set(normalized.split())
        if len(words) < self.min_query_words:
            return False
        # Prefix filter: a set with Jaccard >= t misses at most |A| - ceil(t|A|) of our
        # words, so it contains one of our k rarest words; only those words' sets are read.
        k = len(words) - math.ceil(self.query_threshold * len(words)) + 1
        rarest = sorted(words, key=lambda w: (len(self._word_sets.get(w, ())), w))[:max(k, 1)]
        seen: set[int] = set()
        for w in rarest:
            for idx in self._word_sets.get(w, ()):
                if idx in seen:
                    continue
                seen.add(idx)
                if _jaccard(words, self._query_sets[idx]) >= self.query_threshold:
                    return True
        return False

    def is_contaminated(self, query: str, code: str) -> str | None:
        """The first reason the pair overlaps a benchmark, or None when it is clean.

        Reasons: ``exact-code``, ``near-code``, ``exact-query``, ``near-query``.
        """
        norm_code = normalize_code(code or "")
        if norm_code and norm_code in self.bench.codes:
            return "exact-code"
        if norm_code and self.near_code(norm_code):
            return "near-code"
        norm_query = normalize_text(query or "")
        if norm_query and norm_query in self.bench.texts:
            return "exact-query"
        if norm_query and self.near_query(norm_query):
            return "near-query"
        return None
