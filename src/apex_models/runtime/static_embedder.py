"""A static embedder for the store: the weighted mean of per-token vectors, numpy only.

A folder written by models/static_embedder.py (`static.npy`, `tokenizer.json`,
`static.json`). It satisfies the store's `Embedder` protocol, so
`MemoryStore.open(path, StaticEmbedder(folder), ...)` works as with the bundle's ONNX
embedder; the store records the table's hash as the embedder's identity and refuses to
mix its vectors with another embedder's. Queries and documents are embedded the same
way (no separate query length: a lookup costs nothing per token).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from apex_models.hashing import sha256_file

# The folder's layout; models/static_embedder.py writes it.
SPEC = "static.json"
TABLE = "static.npy"
TOKENIZER = "tokenizer.json"


class StaticEmbedder:
    """Encodes texts into unit float32 vectors by a table lookup and a mean."""

    precision = "static"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        missing = [n for n in (SPEC, TABLE, TOKENIZER) if not (self.root / n).is_file()]
        if missing:
            raise FileNotFoundError(f"{self.root} is not a static embedder folder: missing {', '.join(missing)}")
        self.spec = json.loads((self.root / SPEC).read_text())
        if self.spec.get("format") != "static-mean-v1":
            raise ValueError(f"{self.root / SPEC}: unknown format {self.spec.get('format')!r}")
        self.table_path = self.root / TABLE
        self.table = np.load(self.table_path, mmap_mode="r")
        self.dimension = int(self.table.shape[1])
        if self.dimension != self.spec["dimension"]:
            raise ValueError(f"{self.table_path} has {self.dimension} dimensions, {SPEC} says {self.spec['dimension']}")
        self.tokenizer_path = self.root / TOKENIZER
        self._tokenizer = Tokenizer.from_file(str(self.tokenizer_path))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=int(self.spec["max_length"]))
        self._sha256: str | None = None

    @property
    def onnx_sha256(self) -> str:
        """The store's identity field for an embedder: here the table's hash."""
        if self._sha256 is None:
            self._sha256 = sha256_file(self.table_path)
        return self._sha256

    def encode(self, texts: list[str]) -> np.ndarray:
        """float32 [len(texts), dimension], unit rows (zero for a text with no tokens)."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
        lengths = np.array([len(e.ids) for e in encodings])
        has = lengths > 0
        if has.any():
            ids = np.concatenate([e.ids for e in encodings if e.ids]).astype(np.int64)
            starts = (np.cumsum(lengths) - lengths)[has]     # each text's tokens are one run of rows
            out[has] = np.add.reduceat(self.table[ids], starts, axis=0) / lengths[has, None]
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def encode_queries(self, texts: list[str], batch_size: int = 0, progress: bool = False) -> np.ndarray:
        return self.encode(texts)

    def encode_documents(self, texts: list[str], batch_size: int = 0, progress: bool = False) -> np.ndarray:
        return self.encode(texts)
