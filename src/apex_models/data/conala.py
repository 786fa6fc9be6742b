"""CoNaLa training pairs: Stack Overflow question intents -> short Python snippets.

Real developer phrasing ("How to convert a list of integers into a single integer?")
complements docstring summaries, whose style is the library author's. Only the curated
training file in ``corpora/conala`` is read; the CoNaLa test set is a benchmark.
Records follow the pair schema of :mod:`apex_models.data.code_pairs`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from apex_models.data.code_pairs import pair_sha256

log = logging.getLogger(__name__)

CONALA_LICENSE = "CC-BY-SA-4.0"


def load_conala_pairs(shared_dir: Path) -> list[dict]:
    """Pairs from ``corpora/conala/conala-train.json``, in file order.

    The query is ``rewritten_intent`` when present (it names the variables the snippet
    uses) else ``intent``; items with neither, or without a snippet, are skipped. Each
    pair's ``path`` is ``so-question:<id>`` and ``attribution`` credits the Stack Overflow
    question under CC BY-SA 4.0. A missing file is a warning and gives [].
    """
    path = Path(shared_dir) / "corpora" / "conala" / "conala-train.json"
    if not path.is_file():
        log.warning("CoNaLa training file not found at %s: no CoNaLa pairs", path)
        return []
    pairs = []
    for row in json.loads(path.read_text(encoding="utf-8")):
        query = " ".join((row.get("rewritten_intent") or row.get("intent") or "").split())
        code = (row.get("snippet") or "").strip()
        if not query or not code:
            continue
        qid = row.get("question_id")
        pairs.append({
            "query": query,
            "code": code,
            "package": "conala",
            "version": "",
            "path": f"so-question:{qid}",
            "qualname": "",
            "license": CONALA_LICENSE,
            "source": "conala",
            "attribution": f"Stack Overflow question {qid}, CC BY-SA 4.0, via CoNaLa (CMU)",
            "docstring_kept": False,
            "sha256": pair_sha256(query, code),
        })
    return pairs
