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
