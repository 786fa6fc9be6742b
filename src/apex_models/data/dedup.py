"""Exact and near-duplicate removal over records, first occurrence kept.

Duplicates are common across these sources (a Stack Exchange answer pasted into docs,
the same tldr example on two platforms, mirrored README sections). Training on them
over-weights a few texts and, worse, lets a copy of a held-out item hide in train.

Exact: sha256 of the normalised text (case-folded, whitespace collapsed). Near:
MinHash over word 5-shingles (datasketch) with banded LSH, a candidate confirmed when
its estimated Jaccard reaches the threshold. Streaming with bounded memory: records are
yielded as they are accepted, and the index of kept records (16-byte hashes, 32-bit
signatures, band buckets) lives in a temporary SQLite file, so memory does not grow
with the corpus (disk does: about 0.8 KB per kept record at 128 permutations).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

_WORD = re.compile(r"\w+", re.UNICODE)


def normalize_for_dedup(text: str) -> str:
    return " ".join((text or "").casefold().split())


def _shingles(text: str, n: int = 5) -> set[bytes]:
    words = _WORD.findall(text)
    if len(words) <= n:
        return {" ".join(words).encode("utf-8")} if words else set()
    return {" ".join(words[i:i + n]).encode("utf-8") for i in range(len(words) - n + 1)}


def dedup_keys(text: str, num_perm: int = 128, seed: int = 1, near: bool = True) -> tuple[bytes, Any]:
    """(16-byte sha256 of the normalised text, uint32 MinHash signature or None).

    None when near-duplicate search is off or the text has no words.
    """
    norm = normalize_for_dedup(text)
    digest = hashlib.sha256(norm.encode("utf-8")).digest()[:16]
    if not near:
        return digest, None
    shingles = _shingles(norm)
    if not shingles:
        return digest, None
    from datasketch import MinHash

    mh = MinHash(num_perm=num_perm, seed=seed)
    mh.update_batch(sorted(shingles))
    return digest, mh.hashvalues.astype("uint32")  # datasketch's values fit 32 bits


@dataclass
class DedupStats:
    seen: int = 0
    kept: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0

    def as_dict(self) -> dict[str, Any]:
        seen = max(self.seen, 1)
        return {"seen": self.seen, "kept": self.kept, "exact_duplicates": self.exact_duplicates,
                "near_duplicates": self.near_duplicates,
                "exact_rate": round(self.exact_duplicates / seen, 4),
                "near_rate": round(self.near_duplicates / seen, 4)}


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) for a Jaccard threshold: datasketch's optimum (equal weight
    on false positives and negatives), or the classic (1/b)^(1/r) ~ threshold rule."""
    try:
        from datasketch.lsh import _optimal_param

        return tuple(_optimal_param(threshold, num_perm, 0.5, 0.5))  # type: ignore[return-value]
    except Exception:  # a private helper: fall back if it moves
        best = min(((b, num_perm // b) for b in range(1, num_perm + 1) if num_perm // b >= 1),
                   key=lambda br: abs((1 / br[0]) ** (1 / br[1]) - threshold))
        return best


class Deduplicator:
    """Exact hashes, MinHash signatures and LSH buckets of everything kept so far, on disk.

    The index lives in a temporary SQLite file rather than in Python dicts: an in-memory
    LSH costs a few KB per kept record, which is gigabytes for a multi-GB dump, while
    SQLite keeps memory flat at its page cache and answers the few indexed look-ups per
    record far faster than the HTML parsing upstream. One instance can be fed several
    sources in turn, so a text kept from an earlier source is a duplicate in a later
    one; pass a fresh :class:`DedupStats` per source to get rates per source.
    """

    MAX_CANDIDATES_PER_BAND = 50

    def __init__(self, threshold: float = 0.85, num_perm: int = 128, seed: int = 1, near: bool = True):
        import sqlite3
        import tempfile

        self.threshold = threshold
        self.num_perm = num_perm
        self.seed = seed
        self.near = near
        self.bands, self.rows = lsh_params(threshold, num_perm)
        self._tmp = tempfile.TemporaryDirectory(prefix="dedup-")
        self._db = sqlite3.connect(f"{self._tmp.name}/index.sqlite")
        self._db.executescript("""
            PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
            CREATE TABLE exact (h BLOB PRIMARY KEY) WITHOUT ROWID;
            CREATE TABLE sig (idx INTEGER PRIMARY KEY, v BLOB);
            CREATE TABLE bucket (band INTEGER, h INTEGER, idx INTEGER, PRIMARY KEY (band, h, idx)) WITHOUT ROWID;
        """)
        self._kept = 0

    def __del__(self) -> None:
        try:
            self._db.close()
            self._tmp.cleanup()
        except Exception:
            pass

    def _band_hashes(self, signature) -> list[int]:
        out = []
        for b in range(self.bands):
            chunk = signature[b * self.rows:(b + 1) * self.rows].tobytes()
            out.append(int.from_bytes(hashlib.blake2b(chunk, digest_size=8).digest(), "big", signed=True))
        return out

    def keys(self, text: str) -> tuple[bytes, Any]:
        """(exact digest, MinHash signature or None) of `text`: the costly, stateless half.

        A pure function of the text and the settings, so it can run anywhere (the Ray
        engine computes it on the workers); :meth:`check_keys` is the cheap, stateful half.
        """
        return dedup_keys(text, self.num_perm, self.seed, self.near)

    def check(self, text: str) -> str | None:
        """``"exact"`` or ``"near"`` when `text` duplicates a kept one; else keeps it and returns None."""
        return self.check_keys(*self.keys(text))

    def check_keys(self, digest: bytes, signature: Any) -> str | None:
        """:meth:`check` from keys computed earlier (by :func:`dedup_keys`, possibly elsewhere)."""
        import numpy as np

        db = self._db
        if db.execute("SELECT 1 FROM exact WHERE h=?", (digest,)).fetchone():
            return "exact"
        bands: list[int] = []
        if signature is not None:
            bands = self._band_hashes(signature)
            seen: set[int] = set()
            for b, h in enumerate(bands):
                rows = db.execute("SELECT idx FROM bucket WHERE band=? AND h=? LIMIT ?",
                                  (b, h, self.MAX_CANDIDATES_PER_BAND)).fetchall()
                for (idx,) in rows:
                    if idx in seen:
                        continue
                    seen.add(idx)
                    (blob,) = db.execute("SELECT v FROM sig WHERE idx=?", (idx,)).fetchone()
                    other = np.frombuffer(blob, dtype=np.uint32)
                    if float((other == signature).mean()) >= self.threshold:
                        return "near"
        db.execute("INSERT INTO exact VALUES (?)", (digest,))
        if signature is not None:
            idx = self._kept
            db.execute("INSERT INTO sig VALUES (?, ?)", (idx, signature.tobytes()))
            db.executemany("INSERT OR IGNORE INTO bucket VALUES (?, ?, ?)", [(b, h, idx) for b, h in enumerate(bands)])
        self._kept += 1
        return None

    def count(self, verdict: str | None, stats: DedupStats) -> bool:
        """Add one verdict of :meth:`check` to `stats`; True when the record is kept."""
        stats.seen += 1
        if verdict == "exact":
            stats.exact_duplicates += 1
        elif verdict == "near":
            stats.near_duplicates += 1
        else:
            stats.kept += 1
        return verdict is None

    def filter(self, records: Iterable[dict], stats: DedupStats, text_key: str = "text") -> Iterator[dict]:
        for record in records:
            if self.count(self.check(record.get(text_key) or ""), stats):
                yield record


def dedup_records(records: Iterable[dict], text_key: str = "text", threshold: float = 0.85,
                  num_perm: int = 128) -> tuple[list[dict], dict[str, Any]]:
    """(records without exact and near duplicates, first occurrence kept; stats with rates)."""
    stats = DedupStats()
    kept = list(Deduplicator(threshold, num_perm).filter(records, stats, text_key))
    return kept, stats.as_dict()
