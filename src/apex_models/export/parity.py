"""Parity gates between a reference encoder (torch) and an exported one (ONNX fp32/int8).

A gate that is violated raises; it never warns, because a quietly degraded embedder
corrupts every vector a user stores with it.
"""

from __future__ import annotations

import numpy as np


class ParityError(RuntimeError):
    """An exported model's vectors drifted from the reference beyond a gate's threshold."""


# Fixed probe set: developer queries and short Python snippets, in a fixed order, so gate
# results are comparable between exports. Edit only with a reason: it changes the numbers.
_PROBES: tuple[str, ...] = (
    "how to reverse a list in python",
    "def reverse(xs):\n    return xs[::-1]",
    "read a csv file into a pandas dataframe",
    "import pandas as pd\ndf = pd.read_csv('data.csv')",
    "convert string to datetime with a timezone",
    "from datetime import datetime\ndt = datetime.fromisoformat('2024-01-01T10:00:00+02:00')",
    "python check if a key exists in a dictionary",
    "if 'name' in config:\n    print(config['name'])",
    "sort a list of dicts by a value",
    "rows.sort(key=lambda r: r['age'], reverse=True)",
    "merge two dictionaries",
    "merged = {**defaults, **overrides}",
    "open a file and read it line by line",
    "with open(path, encoding='utf-8') as fh:\n    for line in fh:\n        handle(line.rstrip())",
    "make an http get request with a timeout",
    "import requests\nresp = requests.get(url, timeout=10)\nresp.raise_for_status()",
    "parse json from a string",
    "import json\npayload = json.loads(raw)",
    "write a list of rows to a csv file",
    "import csv\nwith open('out.csv', 'w', newline='') as fh:\n    csv.writer(fh).writerows(rows)",
    "flatten a nested list",
    "flat = [x for sub in nested for x in sub]",
    "remove duplicates from a list while keeping order",
    "unique = list(dict.fromkeys(items))",
    "count word frequencies in a text",
    "from collections import Counter\ncounts = Counter(text.split())",
    "run a shell command and capture its output",
    "import subprocess\nout = subprocess.run(['ls', '-l'], capture_output=True, text=True).stdout",
    "list all files in a directory recursively",
    "from pathlib import Path\nfiles = [p for p in Path('.').rglob('*') if p.is_file()]",
    "get the current working directory",
    "import os\ncwd = os.getcwd()",
    "python regex to extract email addresses",
    "import re\nemails = re.findall(r'[\\w.+-]+@[\\w-]+\\.[\\w.]+', text)",
    "measure how long a function takes to run",
    "import time\nstart = time.perf_counter()\nwork()\nprint(time.perf_counter() - start)",
    "create a virtual environment",
    "python -m venv .venv && source .venv/bin/activate",
    "define a dataclass with default values",
    "from dataclasses import dataclass, field\n\n@dataclass\nclass Point:\n    x: float = 0.0\n    tags: list = field(default_factory=list)",
    "retry a function call with exponential backoff",
    "for attempt in range(5):\n    try:\n        return call()\n    except IOError:\n        time.sleep(2 ** attempt)",
    "numpy matrix multiplication",
    "import numpy as np\nc = a @ b",
    "compute cosine similarity between two vectors",
    "sim = float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))",
    "async http requests with asyncio",
    "async def fetch(client, url):\n    async with client.get(url) as resp:\n        return await resp.text()",
    "logging to a file with a custom format",
    "import logging\nlogging.basicConfig(filename='app.log', format='%(asctime)s %(levelname)s %(message)s')",
    "parse command line arguments",
    "import argparse\nparser = argparse.ArgumentParser()\nparser.add_argument('--verbose', action='store_true')",
    "sqlite insert many rows in a transaction",
    "with conn:\n    conn.executemany('INSERT INTO t (a, b) VALUES (?, ?)', rows)",
    "why does my generator only iterate once",
    "squares = (x * x for x in range(10))\ntotal = sum(squares)",
    "TypeError: unhashable type: 'list'",
    "fix ModuleNotFoundError when running pytest",
    "pytest fixture with setup and teardown",
    "@pytest.fixture\ndef db():\n    conn = connect()\n    yield conn\n    conn.close()",
    "git undo the last commit but keep the changes",
    "docker container cannot reach localhost on the host",
    "what is the difference between a process and a thread",
    "memoize a recursive function",
)


# More developer requests, one per line as a user would type them (written for this set,
# none taken from a benchmark), covering every intent of the taxonomy and off-topic asks.
# With the natural-language lines of _PROBES they are the probes of a query classifier:
# the intent model sees queries, and its argmax on code snippets (half of _PROBES) is a
# near tie (fp32 top-2 margins of 0.2-0.3 logits), so there a gate measures rounding of
# inputs it is never given rather than the quality of the quantised graph.
_QUERY_PROBES: tuple[str, ...] = (
    "where is the retry logic for http calls in this repo",
    "find the function that parses the config file",
    "how do I pass headers with requests.post",
    "example of argparse subcommands with shared options",
    "TypeError: 'NoneType' object is not subscriptable when reading the response",
    "ModuleNotFoundError: No module named 'yaml' inside the docker image",
    "why does my asyncio task never finish",
    "segfault in the C extension after upgrading numpy",
    "what does the GIL actually protect",
    "explain how python descriptors work",
    "difference between a generator and an iterator",
    "what is eventual consistency",
    "break the auth migration into tasks for this sprint",
    "plan the steps to move our CI from travis to github actions",
    "outline how to add rate limiting to the api",
    "steps to split the monolith's billing module into a service",
    "what did we decide about the caching layer last week",
    "remind me why we pinned urllib3 to 1.26",
    "show my notes on the flaky integration test",
    "what was the fix for the deadlock we hit in march",
    "set the DATABASE_URL for local development",
    "configure pytest to show print output",
    "how do I set up pre-commit with ruff",
    "enable verbose logging in the nginx config",
    "review this function for readability",
    "refactor the long if-else chain in the router into a table",
    "is there a cleaner way to write this nested loop",
    "suggest better names for these variables",
    "what is a good recipe for banana bread",
    "who won the football match yesterday",
    "write a poem about the sea",
    "book me a table for two tonight",
)


def probe_texts(n: int = 64) -> list[str]:
    """The first `n` probe texts (deterministic); at most the size of the fixed set."""
    if not 0 < n <= len(_PROBES):
        raise ValueError(f"probe_texts: n must be between 1 and {len(_PROBES)}, got {n}")
    return list(_PROBES[:n])


def embedding_parity(reference: np.ndarray, candidate: np.ndarray) -> dict:
    """Per-text cosine between two [n, dim] arrays: {"min", "mean", "n", "worst_index"}.

    Rows are normalised here so an un-normalised candidate is still compared by angle.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cand = np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape or ref.ndim != 2:
        raise ParityError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
    if ref.shape[0] == 0:
        raise ParityError("no texts to compare")
    ref_norm = np.linalg.norm(ref, axis=1)
    cand_norm = np.linalg.norm(cand, axis=1)
    cos = (ref * cand).sum(axis=1) / np.maximum(ref_norm * cand_norm, 1e-12)
    cos = np.where(np.isfinite(cos), cos, -1.0)  # NaN vectors must fail the gate, not pass it
    worst = int(np.argmin(cos))
    return {"min": float(cos[worst]), "mean": float(cos.mean()), "n": int(cos.shape[0]),
            "worst_index": worst}


def check_embedding_gate(name: str, stats: dict, min_cosine: float | None = None,
                         mean_cosine: float | None = None) -> None:
    """Raise ParityError when `stats` (from embedding_parity) falls below a threshold.

    `name` should say which model and precision, e.g. "embedder int8"; the message names
    it, the threshold and the worst text's index so the failure can be reproduced.
    """
    failures = []
    if min_cosine is not None and not stats["min"] >= min_cosine:
        failures.append(f"min cosine {stats['min']:.6f} < {min_cosine} "
                        f"(worst probe text index {stats.get('worst_index', '?')})")
    if mean_cosine is not None and not stats["mean"] >= mean_cosine:
        failures.append(f"mean cosine {stats['mean']:.6f} < {mean_cosine}")
    if failures:
        raise ParityError(f"parity gate failed for {name} over {stats.get('n', '?')} texts: "
                          + "; ".join(failures))


def probe_queries(n: int = 64) -> list[str]:
    """The first `n` developer queries: the natural-language lines of the probe set, then
    _QUERY_PROBES. The probe set of a query classifier (see _QUERY_PROBES for why)."""
    queries = _PROBES[0::2] + _QUERY_PROBES
    if not 0 < n <= len(queries):
        raise ValueError(f"probe_queries: n must be between 1 and {len(queries)}, got {n}")
    return list(queries[:n])


def probe_ranking_set(n: int = 64) -> tuple[list[str], list[str]]:
    """(queries, candidates) from the fixed probe set: its natural-language lines rank its code.

    The probe set alternates query and snippet, so every query has its own snippet among
    the candidates plus every other one: a realistic mix of one match and near misses.
    """
    texts = probe_texts(n)
    return texts[0::2], texts[1::2]


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x))
    return ranks


def ranking_parity(reference: list[np.ndarray], candidate: list[np.ndarray], k: int = 10) -> dict:
    """Per query: Spearman between score lists, and whether the top-k order is the same.

    Returns {"spearman_min", "spearman_mean", "top_k_order_agreement" (share of queries whose
    top-k list is identical, in order), "top_k_overlap" (mean |top-k ∩ top-k| / k), "k", "n"}.
    """
    if len(reference) != len(candidate) or not reference:
        raise ParityError(f"ranking parity needs equal, non-empty query lists ({len(reference)} vs {len(candidate)})")
    rho, same, overlap = [], [], []
    for ref, cand in zip(reference, candidate):
        ref, cand = np.asarray(ref, dtype=np.float64), np.asarray(cand, dtype=np.float64)
        if ref.shape != cand.shape:
            raise ParityError(f"shape mismatch: reference {ref.shape} vs candidate {cand.shape}")
        if not np.all(np.isfinite(cand)):
            rho.append(-1.0)
        else:
            r = np.corrcoef(_ranks(ref), _ranks(cand))[0, 1]
            rho.append(float(r) if np.isfinite(r) else -1.0)
        top_ref, top_cand = np.argsort(-ref, kind="stable")[:k], np.argsort(-cand, kind="stable")[:k]
        same.append(bool(np.array_equal(top_ref, top_cand)))
        overlap.append(len(set(top_ref) & set(top_cand)) / len(top_ref))
    return {"spearman_min": float(min(rho)), "spearman_mean": float(np.mean(rho)),
            "top_k_order_agreement": float(np.mean(same)), "top_k_overlap": float(np.mean(overlap)),
            "k": k, "n": len(reference)}


TIE_MARGIN = 0.05
"""Logits within this of the reference's top logit are a tie: exp(0.05) = 1.05, so the
reference itself rates those classes within 5% of each other, and a candidate that picks
any of them has not changed a decision the reference made."""


def argmax_agreement(reference: np.ndarray, candidate: np.ndarray, tie_margin: float = TIE_MARGIN) -> dict:
    """Share of rows (texts, or tokens for a tagger) where both pick the same class.

    `argmax_agreement` is strict. `argmax_agreement_within_ties` also counts a row as
    agreeing when the candidate picks a class whose reference logit is within
    `tie_margin` of the reference's top one (a near tie the reference does not decide);
    `ties` counts the rows where that tolerance was what made them agree.
    """
    ref, cand = np.asarray(reference), np.asarray(candidate)
    if ref.shape != cand.shape or ref.ndim != 2 or ref.shape[0] == 0:
        raise ParityError(f"shape mismatch or empty: reference {ref.shape} vs candidate {cand.shape}")
    picked = cand.argmax(1)
    agree = ref.argmax(1) == picked
    within = ref[np.arange(len(ref)), picked] >= ref.max(1) - tie_margin
    return {"argmax_agreement": float(agree.mean()), "argmax_agreement_within_ties": float(within.mean()),
            "n": int(len(agree)), "tie_margin": tie_margin, "ties": int((within & ~agree).sum()),
            "disagreements": [int(i) for i in np.flatnonzero(~agree)[:10]],
            "max_abs_logit_diff": float(np.max(np.abs(ref - cand)))}


def check_floor(name: str, stats: dict, floors: dict[str, float]) -> None:
    """Raise ParityError when any `stats[key]` is below `floors[key]` (NaN fails too)."""
    failures = [f"{key} {stats[key]:.6f} < {floor}" for key, floor in floors.items()
                if not stats[key] >= floor]
    if failures:
        raise ParityError(f"parity gate failed for {name} over {stats.get('n', '?')} probes: " + "; ".join(failures))
