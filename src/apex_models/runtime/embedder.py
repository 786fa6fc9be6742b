"""Sentence embeddings from a bundle's ONNX graph: tokenise with `tokenizers`, run ORT.

The graph already pools and normalises (see apex_models.export.onnx), so this module
only tokenises, pads each batch to its longest text and runs the graph (a one-thread
session for queries, a multi-threaded one for bulk adds and indexing: `models.Sessions`).
No torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from apex_models.hashing import sha256_file
from apex_models.runtime.bundle import BundleError, EmbeddingSpec
from apex_models.runtime.models import Sessions, pad_id

def _progress(items: list, enabled: bool, desc: str, unit: str = "batch") -> Iterable:
    """tqdm when installed (the train extra has it), else rich (always in the runtime)."""
    if not enabled:
        return items
    try:
        from tqdm.auto import tqdm

        return tqdm(items, desc=desc, unit=unit)
    except ImportError:
        from rich.progress import track

        return track(items, description=desc)


def _batches(order: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(order), size):
        yield order[start:start + size]


class OnnxEmbedder:
    """Encodes texts into unit float32 vectors with one bundle model at one precision."""

    def __init__(self, root: Path, spec: EmbeddingSpec, precision: str, intra_op_threads: int = 1,
                 onnx_sha256: str | None = None, bulk_threads: int | None = None) -> None:
        """`intra_op_threads` serves queries and small batches; `bulk_threads` (None: one per
        usable core, at most 4) serves batches of `models.BULK_MIN_ROWS` texts or more."""
        if precision not in spec.onnx:
            raise BundleError(f"no precision {precision!r}; available: {', '.join(sorted(spec.onnx))}")
        self.root = Path(root)
        self.spec = spec
        self.precision = precision
        self.dimension = spec.dimension
        self.onnx_path = self.root / spec.onnx[precision]
        self.tokenizer_path = self.root / spec.tokenizer
        self._onnx_sha256 = onnx_sha256
        # One tokenizer per max length: truncation is tokenizer state, and keeping it
        # fixed per instance avoids flipping it back and forth between queries and documents.
        self._tokenizers: dict[int, Tokenizer] = {}
        base = Tokenizer.from_file(str(self.tokenizer_path))
        self._pad_id = pad_id(base)

        self.sessions = Sessions(self.onnx_path, intra_op_threads, bulk_threads)
        self.session = self.sessions.latency
        self._input_names = {i.name for i in self.session.get_inputs()}
        self._output_name = self.session.get_outputs()[0].name

    @property
    def onnx_sha256(self) -> str:
        """Identity of the graph; taken from the verified manifest when the bundle gave it."""
        if self._onnx_sha256 is None:
            self._onnx_sha256 = sha256_file(self.onnx_path)
        return self._onnx_sha256

    def _tokenizer(self, max_length: int) -> Tokenizer:
        tok = self._tokenizers.get(max_length)
        if tok is None:
            tok = Tokenizer.from_file(str(self.tokenizer_path))
            tok.no_padding()
            tok.enable_truncation(max_length=max_length)
            self._tokenizers[max_length] = tok
        return tok

    def _run(self, ids: list[list[int]], session: ort.InferenceSession | None = None) -> np.ndarray:
        """One padded batch through ONNX Runtime; padding is masked, so its id is irrelevant."""
        width = max(len(x) for x in ids)
        input_ids = np.full((len(ids), width), self._pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, :len(seq)] = seq
            attention_mask[row, :len(seq)] = 1
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
        if "token_type_ids" in self._input_names:  # graphs exported by other tools
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        return (session or self.session).run([self._output_name], feeds)[0]

    def encode(self, texts: list[str], max_length: int, batch_size: int = 64,
               progress: bool = False) -> np.ndarray:
        """float32 [len(texts), dimension]; unit rows when the spec normalises."""
        texts = list(texts)
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        if not texts:
            return out
        encodings = self._tokenizer(max_length).encode_batch(texts)
        ids = [e.ids for e in encodings]
        # Similar lengths together so each batch pads little; rows go back to their index.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        session = self.sessions.for_rows(len(texts))
        for idx in _progress(list(_batches(order, batch_size)), progress, "encode"):
            out[idx] = self._run([ids[i] for i in idx], session)
        if self.spec.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def encode_queries(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.encode(texts, self.spec.query_max_length, batch_size, progress)

    def encode_documents(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.encode(texts, self.spec.doc_max_length, batch_size, progress)
