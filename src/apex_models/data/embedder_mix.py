"""The embedder's training mix: query-like (query, document) pairs from every corpus, by weight.

Docstring summaries alone teach the model docstring style ("Returns the Bull Graph"),
while developers search the way they type into a web search box ("python get bull
graph", "how to read a file line by line in python": every CoSQA query names the
language, most are lower case and drop articles). So the mix draws from:

``docstring``      (docstring summary -> function) pairs as built by the datasets stage;
``docstring_query`` the same pairs with the summary rewritten as a web query
                   (:func:`web_query`), a deterministic template per pair;
``conala``         CoNaLa intents (Stack Overflow question titles rewritten by people)
                   -> snippets, rewritten as web queries with probability ``conala_query``;
``stackexchange``  question titles -> the accepted answer's first code block, else its text;
``stackexchange_qa`` the whole question (title and body) -> the whole accepted answer, the
                   shape of a question looked up among answers (the ranker's Q&A task);
``tldr``           tldr-pages command descriptions -> commands.

Each source gets ``weight / sum(weights)`` of ``total`` pairs (a seeded sample without
replacement; a source with fewer pairs gives all it has, and the report says so). All
inputs are outputs of stages that already decontaminated against every benchmark; this
module adds no text of its own beyond the query templates.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import numpy as np

from apex_models.data.records import read_records
from apex_models.data.task_data import read_split
from apex_models.hashing import sha256_bytes

if TYPE_CHECKING:
    from apex_models.config import PairMixConfig

SOURCES = ("docstring", "docstring_query", "conala", "stackexchange", "stackexchange_qa", "tldr")

# Leading docstring verbs and what a person searching would type instead.
_VERB_MAP = {"return": "get", "returns": "get", "yield": "iterate", "yields": "iterate",
             "compute": "compute", "computes": "compute", "calculate": "calculate", "calculates": "calculate"}
_DROP_PREFIXES = ("this function ", "this method ", "helper to ", "helper function to ", "utility to ",
                  "function to ", "method to ", "used to ", "a function that ", "a helper that ")
_ARTICLES = {"a", "an", "the"}
_MARKUP = re.compile(r":[a-z]+:`~?\.?([^`]+)`|``([^`]+)``|`([^`]+)`")
_CODE_BLOCK = re.compile(r"```[a-zA-Z0-9_+-]*\n(.*?)```", re.S)
# Every CoSQA query names the language: about half start with it, a fifth ask "how to".
# (Queries without it come from the `docstring` source.)
_TEMPLATES = ("python {q}", "{q} python", "how to {q} in python", "{q} in python", "python {q}",
              "{q} python", "python3 {q}", "python {q}")


def stable_unit(seed: int, *parts: str) -> float:
    """A stable number in [0, 1) for a pair: templates do not change when the mix does."""
    return int(sha256_bytes("\0".join([str(seed), *parts]).encode())[:12], 16) / float(16 ** 12)


def _base_verb(word: str) -> str:
    """'Creates' -> 'create', 'Checks' -> 'check', 'Returns' -> 'get' (third person to base form)."""
    low = word.lower()
    if low in _VERB_MAP:
        return _VERB_MAP[low]
    if low.endswith("ies") and len(low) > 4:
        return low[:-3] + "y"
    if low.endswith(("sses", "shes", "ches", "xes", "zes")):
        return low[:-2]
    if low.endswith("s") and not low.endswith(("ss", "us", "is")) and len(low) > 3:
        return low[:-1]
    return low


def web_query(summary: str, key: str, seed: int = 0, max_words: int = 12) -> str:
    """A docstring summary or a question title, rewritten the way developers search.

    First clause only, at most `max_words` words, lower case, Sphinx/Markdown markup
    unwrapped, a leading "Return(s)" becomes "get"
    and other third-person verbs their base form, articles dropped, final punctuation
    removed, and "python" placed by one of a few templates chosen by `key`'s hash.
    ``web_query("Returns the Bull Graph.", "k")`` may give ``"python get bull graph"``.
    """
    text = _MARKUP.sub(lambda m: next(g for g in m.groups() if g), summary)
    text = " ".join(text.replace("\n", " ").split()).strip()
    # Searches are short (CoSQA: about 6 words): keep the first clause, at most `max_words` words.
    text = re.split(r"[,;:(]| - ", text, maxsplit=1)[0]
    text = " ".join(text.split()[:max_words]).rstrip(".!?:;, ")
    low = text.lower()
    for prefix in _DROP_PREFIXES:
        if low.startswith(prefix):
            text = text[len(prefix):]
            break
    words = text.split()
    if not words:
        return summary
    words[0] = _base_verb(words[0])
    words = [w.lower() for w in words if w.lower() not in _ARTICLES] or [w.lower() for w in words]
    query = " ".join(words)
    if "python" in query:
        return query
    template = _TEMPLATES[int(stable_unit(seed, "template", key) * len(_TEMPLATES))]
    return template.format(q=query)


def stackexchange_pairs(rows: Iterable[dict], max_chars: int = 2000) -> list[tuple[str, str]]:
    """(title, accepted answer's first code block or its text); questions without one are skipped."""
    out = []
    for row in rows:
        answer = row.get("accepted_answer") or ""
        title = (row.get("title") or "").strip()
        if not answer.strip() or not title:
            continue
        block = _CODE_BLOCK.search(answer)
        doc = block.group(1).strip() if block and len(block.group(1).strip()) >= 20 else answer.strip()
        out.append((title, doc[:max_chars]))
    return out


def question_text(row: dict) -> str:
    """A Stack Exchange question as a searcher asks it: its title, then its body."""
    return " ".join(f"{row.get('title') or ''} {row.get('question') or ''}".split())


def qa_pair(row: dict, max_chars: int = 2000) -> tuple[str, str] | None:
    """(title + body, the whole accepted answer cut to `max_chars`), or None for a question
    without a title or an accepted answer.

    The one definition of a Q&A pair: the ranker's dataset finds a question's other answer
    and its held-out questions by this key, so a pair built any other way would silently
    match neither.
    """
    accepted = (row.get("accepted_answer") or "").strip()
    if not accepted or not (row.get("title") or "").strip():
        return None
    return question_text(row), accepted[:max_chars]


def stackexchange_qa_pairs(rows: Iterable[dict], max_chars: int = 2000) -> list[tuple[str, str]]:
    """:func:`qa_pair` of every question that has one."""
    return [pair for pair in (qa_pair(row, max_chars) for row in rows) if pair is not None]


def stackexchange_records(sources_dir: Path | None) -> list[dict]:
    """The ingested Stack Exchange records (``<sources_dir>/stackexchange.jsonl``); none when
    the file or the folder is missing."""
    path = Path(sources_dir) / "stackexchange.jsonl" if sources_dir is not None else None
    return list(read_records(path)) if path is not None and path.is_file() else []


def source_pairs(train_split: Path, sources_dir: Path | None, seed: int, conala_query: float = 0.5,
                 records: list[dict] | None = None) -> dict[str, list[tuple[str, str]]]:
    """Every candidate pair per mix source, in file order (sampling happens in :func:`mix_pairs`).

    `train_split` is the embedder dataset's train split folder (``<dataset>/train``);
    `sources_dir` holds the ingest_sources records (JSONL) that the other sources come from.
    `records` are its Stack Exchange records when the caller has read them already (the
    ranker needs them again for siblings and its Q&A dev set); None reads them here.
    """
    pools: dict[str, list[tuple[str, str]]] = {name: [] for name in SOURCES}
    for row in read_split(train_split):
        query, code = row["query"], row["code"]
        if row.get("source") == "conala":
            if stable_unit(seed, "conala", query) < conala_query:
                query = web_query(query, query, seed)
            pools["conala"].append((query, code))
        else:
            pools["docstring"].append((query, code))
            pools["docstring_query"].append((web_query(query, row.get("sha256") or query + code, seed), code))
    if sources_dir is not None:
        if records is None:
            records = stackexchange_records(sources_dir)
        if records:
            pools["stackexchange"] = stackexchange_pairs(records)
            pools["stackexchange_qa"] = stackexchange_qa_pairs(records)
        tldr = Path(sources_dir) / "tldr.jsonl"
        if tldr.is_file():
            pools["tldr"] = [(r["query"], r["code"]) for r in read_records(tldr) if r.get("query") and r.get("code")]
    return pools


def mix_pairs(pools: dict[str, list[tuple[str, str]]], weights: dict[str, float], total: int,
              seed: int) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """`total` pairs drawn from the pools by weight; returns the pairs and the count per source.

    ``docstring`` and ``docstring_query`` are two phrasings of the same functions (their
    pools are index-aligned): one seeded draw of functions is split between them in
    proportion to their weights, so no function appears twice and, when functions run
    short, both shrink alike rather than the first starving the second.
    """
    unknown = set(weights) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown mix sources {sorted(unknown)}; expected some of {SOURCES}")
    active = {k: w for k, w in weights.items() if w > 0}
    if not active:
        raise ValueError("every mix weight is 0: nothing to train on")
    norm = sum(active.values())
    want = {name: int(round(total * w / norm)) for name, w in active.items()}
    rng = np.random.default_rng([seed, 7])
    chosen: dict[str, list[tuple[str, str]]] = {}

    phrasings = [n for n in ("docstring_query", "docstring") if n in want]
    if phrasings:
        n_funcs = len(pools.get("docstring", []))
        asked = sum(want[n] for n in phrasings)
        if asked > n_funcs:
            for n in phrasings:
                want[n] = int(want[n] * n_funcs / asked)
        seen: set[str] = set()
        picks: list[int] = []
        for i in rng.permutation(n_funcs).tolist():
            if len(picks) == sum(want[n] for n in phrasings):
                break
            code = pools["docstring"][i][1]
            if code not in seen:
                seen.add(code)
                picks.append(i)
        start = 0
        for n in phrasings:
            chosen[n] = [pools[n][i] for i in picks[start:start + want[n]]]
            start += want[n]
    for name in SOURCES:
        if name in want and name not in chosen:
            pool = pools.get(name, [])
            chosen[name] = [pool[i] for i in rng.permutation(len(pool))[:want[name]].tolist()]
    out = [pair for name in SOURCES for pair in chosen.get(name, [])]
    if not out:
        raise ValueError(f"the mix {weights} found no pairs in its sources")
    counts = {name: len(chosen[name]) for name in SOURCES if name in chosen}
    order = rng.permutation(len(out)).tolist()
    return [out[i] for i in order], counts


def read_pairs(path: Path, limit: int, seed: int) -> list[tuple[str, str]]:
    """(query, code) pairs of a dataset split folder; a seeded shuffle before the cut keeps
    every package in play."""
    pairs = [(row["query"], row["code"]) for row in read_split(path)]
    if not pairs:
        raise ValueError(f"{path} holds no training pairs")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pairs))[:limit]
    return [pairs[i] for i in sorted(order)]


def training_pairs(data: PairMixConfig, limit: int, seed: int, train_path: Path,
                   sources_dir: Path | None, records: list[dict] | None = None
                   ) -> tuple[list[tuple[str, str]], dict]:
    """Step 1: the mix by weight, or the train split as is; returns the pairs and counts per source.

    The ranker builds its pairs here too (with its own `data` section), so both models
    read their query-like sources the same way.
    """
    if data.mix is None:
        pairs = read_pairs(train_path, limit, seed)
        return pairs, {"train": len(pairs)}
    pools = source_pairs(train_path, sources_dir, seed, data.conala_query, records)
    return mix_pairs(pools, data.mix, limit, seed)
