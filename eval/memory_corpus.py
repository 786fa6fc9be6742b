"""Realistic memory texts for the memory benchmark, cut from the project's real corpora.

Read through `--corpus` (JSON lines with a `text` field: `data/ingest/code.jsonl`,
`data/sources/*.jsonl`); nothing here is committed. Python files become windows of
`WINDOW` lines (what `apex memory index` would store as small code memories); every other
record (a Stack Exchange Q&A, a tldr example, a CoNaLa pair) is one memory of at most
`MAX_CHARS` characters. Texts are distinct; their order is a seeded shuffle, so a tier
of n memories is the first n and mixes every source.

When the first pass (windows at offsets 0, STRIDE, 2*STRIDE...) gives too few texts, later
passes shift the windows by one line: still distinct real text, overlapping the first pass.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

WINDOW = 6
STRIDE = 3
MAX_CHARS = 800
_ERROR = re.compile(r"\b(Traceback|[A-Z][A-Za-z]*(Error|Exception))\b")


def _files(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(path.glob("*.jsonl"))
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"corpus path {path} does not exist (give --corpus data/ingest/code.jsonl ...)")
    if not out:
        raise FileNotFoundError(f"no .jsonl files under {', '.join(map(str, paths))}")
    return out


def _kind(text: str, default: str) -> str:
    return "error" if _ERROR.search(text) else default


def _records(files: list[Path]) -> list[dict]:
    records = []
    for path in files:
        with path.open(encoding="utf-8") as handle:
            records += [json.loads(line) for line in handle if line.strip()]
    return records


def _pass(records: list[dict], offset: int) -> list[dict]:
    """One pass of memories: code windows starting at `offset` mod STRIDE; other records once (offset 0)."""
    out = []
    for rec in records:
        text = rec.get("text") or ""
        origin = rec.get("package") or rec.get("source") or "corpus"
        source = f"{origin}/{rec.get('path', '')}".rstrip("/")
        if rec.get("language") == "python" and rec.get("kind") == "code":
            lines = text.splitlines()
            for start in range(offset, max(len(lines) - WINDOW + 1, 1), STRIDE):
                chunk = "\n".join(lines[start:start + WINDOW]).strip()
                if len(chunk.replace(" ", "")) >= 40:
                    out.append({"text": chunk[:MAX_CHARS], "kind": _kind(chunk, "code"), "tags": [origin],
                                "source": f"{source}#L{start + 1}"})
        elif offset == 0 and text.strip():
            out.append({"text": text.strip()[:MAX_CHARS], "kind": _kind(text, "note"), "tags": [origin],
                        "source": source})
    return out


def memory_items(paths: list[Path], n: int, seed: int = 0) -> list[dict]:
    """n distinct memories (text, kind, tags, source) from the corpora, seeded order."""
    records = _records(_files(paths))
    seen: set[str] = set()
    items: list[dict] = []
    for offset in range(STRIDE):
        batch = [item for item in _pass(records, offset) if not (item["text"] in seen or seen.add(item["text"]))]
        random.Random(seed + offset).shuffle(batch)
        items += batch
        if len(items) >= n:
            return items[:n]
    raise ValueError(f"the corpus gives only {len(items)} distinct memories, fewer than {n}")


def queries(paths: list[Path], n: int, seed: int = 1) -> list[str]:
    """Developer questions: the `query` (tldr, CoNaLa intent) or `title` (Stack Exchange) of records."""
    pool = sorted({(r.get("query") or r.get("title") or "").strip() for r in _records(_files(paths))} - {""})
    if len(pool) < n:
        raise ValueError(f"the corpus has only {len(pool)} query-like fields, fewer than {n}")
    return random.Random(seed).sample(pool, n)


def cached_vectors(embedder, texts: list[str], cache: Path, progress: bool = True) -> "np.ndarray":
    """Document vectors of `texts` from `embedder`, computed once per (texts, graph) and kept in
    `cache` as .npy (outside git): 100k texts take minutes on two cores."""
    import hashlib
    import sys
    import time

    import numpy as np

    digest = hashlib.sha256(("\n\x00".join(texts) + embedder.onnx_sha256).encode()).hexdigest()[:16]
    path = Path(cache).expanduser() / f"vectors-{len(texts)}-{digest}.npy"
    if path.is_file():
        return np.load(path, mmap_mode="r")
    start = time.perf_counter()
    vectors = embedder.encode_documents(texts, batch_size=64, progress=progress)
    print(f"embedded {len(texts)} texts in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    tmp.replace(path)
    return vectors
