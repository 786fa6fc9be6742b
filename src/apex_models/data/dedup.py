"""Exact and near-duplicate removal over records, first occurrence kept.

Duplicates are common across these sources (a Stack Exchange answer pasted into docs,
the same tldr example on two platforms, mirrored README sections). Training on them
over-weights a few texts and, worse, lets a copy of a held-out item hide in train.

Exact: sha256 of the normalised text (case-folded, whitespace collapsed). Near:
MinHash over word 5-shingles with LSH (datasketch), a candidate confirmed when its
estimated Jaccard reaches the threshold. Streaming: records are yielded as they are
accepted; memory grows with the number of kept records (one 32-byte hash and one
MinHash of `num_perm` integers each, about 1 KB at 128), not with their text.
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


class Deduplicator:
    """Holds the hashes and the LSH index of everything kept so far.

    One instance can be fed several sources in turn, so a text already kept from an
    earlier source is a duplicate in a later one; pass a fresh :class:`DedupStats` per
    source to get rates per source.
    """

    def __init__(self, threshold: float = 0.85, num_perm: int = 128, seed: int = 1, near: bool = True):
        from datasketch import MinHashLSH

        self.threshold = threshold
        self.num_perm = num_perm
        self.seed = seed
        self.near = near
        self._hashes: set[bytes] = set()
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm) if near else None
        self._signatures: list[Any] = []  # hash values of kept MinHashes, to confirm LSH candidates

    def _minhash(self, shingles: set[bytes]):
        from datasketch import MinHash

        mh = MinHash(num_perm=self.num_perm, seed=self.seed)
        mh.update_batch(sorted(shingles))
        return mh

    def check(self, text: str) -> str | None:
        """``"exact"`` or ``"near"`` when `text` duplicates a kept one; else keeps it and returns None."""
        norm = normalize_for_dedup(text)
        digest = hashlib.sha256(norm.encode("utf-8")).digest()
        if digest in self._hashes:
            return "exact"
        mh = None
        if self._lsh is not None:
            shingles = _shingles(norm)
            if shingles:
                mh = self._minhash(shingles)
                for key in sorted(self._lsh.query(mh)):
                    if float((self._signatures[key] == mh.hashvalues).mean()) >= self.threshold:
                        return "near"
        self._hashes.add(digest)
        if mh is not None:
            self._lsh.insert(len(self._signatures), mh)
            self._signatures.append(mh.hashvalues)
        return None

    def filter(self, records: Iterable[dict], stats: DedupStats, text_key: str = "text") -> Iterator[dict]:
        for record in records:
            stats.seen += 1
            verdict = self.check(record.get(text_key) or "")
            if verdict == "exact":
                stats.exact_duplicates += 1
            elif verdict == "near":
                stats.near_duplicates += 1
            else:
                stats.kept += 1
                yield record


def dedup_records(records: Iterable[dict], text_key: str = "text", threshold: float = 0.85,
                  num_perm: int = 128) -> tuple[list[dict], dict[str, Any]]:
    """(records without exact and near duplicates, first occurrence kept; stats with rates)."""
    stats = DedupStats()
    kept = list(Deduplicator(threshold, num_perm).filter(records, stats, text_key))
    return kept, stats.as_dict()
