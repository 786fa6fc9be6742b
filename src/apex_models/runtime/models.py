"""Ranker, classifiers, token taggers and the planner from a bundle's ONNX graphs: `tokenizers` + ONNX Runtime.

Each class takes one manifest spec at one precision and does only what the graph cannot:
tokenise (pairs for the cross-encoder, with offsets for the tagger), pad each batch to its
longest row, run the graph, and turn logits into answers (softmax confidences, labels,
character spans, or greedy decoding with a KV cache for the planner). No torch, no transformers;
a decoder-only planner runs through onnxruntime-genai, which owns its KV cache.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from apex_models.data.planner_dataset import model_input, parse_steps, similar_plan_text
from apex_models.runtime.bundle import (BundleError, CausalPlannerSpec, CrossEncoderSpec, PlannerSpec,
                                        SequenceClassifierSpec, TokenClassifierSpec)

PAD_TOKENS = ("[PAD]", "<pad>", "<|padding|>")


def make_session(path: Path, intra_op_threads: int = 1, spin: bool = True) -> ort.InferenceSession:
    """A CPU session with all graph optimisations on; threads pinned (contention hurts p99).

    `spin=False` lets a multi-threaded session's idle workers sleep instead of busy-waiting
    for the next run, for sessions used in bursts (bulk embedding) beside a latency path.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


# Batches of at least this many rows go to the bulk session (Sessions.for_rows).
BULK_MIN_ROWS = 16
# More threads than this stop paying on models of this size and starve other processes.
MAX_BULK_THREADS = 4


def default_bulk_threads() -> int:
    """Threads for bulk work: the cores this process may run on, at most MAX_BULK_THREADS."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    return max(1, min(MAX_BULK_THREADS, usable))


class Sessions:
    """One graph, two sessions: `latency` (few threads) for single queries and small
    batches, where a second thread makes a short query slower (embedder, one query: 0.89 ms
    p50 on one thread, 1.10 ms on two), and a bulk session with one thread per usable core
    for batches of BULK_MIN_ROWS or more (adds, indexing, re-ranking a top-k), where a
    second core gives about 1.6x the rows per second. The bulk session is made on first use,
    so opening a store does not pay for it, and its idle threads sleep rather than spin."""

    def __init__(self, path: Path, threads: int = 1, bulk_threads: int | None = None) -> None:
        self.path = Path(path)
        self.latency = make_session(self.path, threads)
        wanted = default_bulk_threads() if bulk_threads is None else bulk_threads
        self.bulk_threads = max(threads, wanted)
        self._bulk = None if self.bulk_threads > threads else self.latency
        self._lock = threading.Lock()

    def for_rows(self, rows: int) -> ort.InferenceSession:
        """The session for a batch of `rows` rows."""
        if rows < BULK_MIN_ROWS:
            return self.latency
        with self._lock:
            if self._bulk is None:
                self._bulk = make_session(self.path, self.bulk_threads, spin=False)
            return self._bulk


def pad_id(tokenizer: Tokenizer) -> int:
    return next((tokenizer.token_to_id(t) for t in PAD_TOKENS if tokenizer.token_to_id(t) is not None), 0)


def pad_batch(ids: list[list[int]], pad: int, type_ids: list[list[int]] | None = None) -> dict[str, np.ndarray]:
    """int64 input_ids / attention_mask (and token_type_ids) padded to the longest row."""
    width = max(len(x) for x in ids)
    out = {"input_ids": np.full((len(ids), width), pad, dtype=np.int64),
           "attention_mask": np.zeros((len(ids), width), dtype=np.int64),
           "token_type_ids": np.zeros((len(ids), width), dtype=np.int64)}
    for row, seq in enumerate(ids):
        out["input_ids"][row, :len(seq)] = seq
        out["attention_mask"][row, :len(seq)] = 1
        if type_ids is not None:
            out["token_type_ids"][row, :len(seq)] = type_ids[row]
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _length_batches(lengths: list[int], size: int) -> Iterator[list[int]]:
    """Indices grouped by similar length, so each batch pads little."""
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    for start in range(0, len(order), size):
        yield order[start:start + size]


class _OnnxModel:
    """Tokenizer (truncating at the spec's max_length) + session for one spec and precision."""

    def __init__(self, root: Path, spec, precision: str, intra_op_threads: int = 1,
                 bulk_threads: int | None = None) -> None:
        if precision not in spec.onnx:
            raise BundleError(f"no precision {precision!r}; available: {', '.join(sorted(spec.onnx))}")
        self.root, self.spec, self.precision = Path(root), spec, precision
        self.onnx_path = self.root / spec.onnx[precision]
        self.tokenizer = Tokenizer.from_file(str(self.root / spec.tokenizer))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=spec.max_length, strategy="longest_first")
        self._pad = pad_id(self.tokenizer)
        self.sessions = Sessions(self.onnx_path, intra_op_threads, bulk_threads)
        self.session = self.sessions.latency
        self._inputs = {i.name for i in self.session.get_inputs()}

    def _run(self, feeds: dict[str, np.ndarray], session: ort.InferenceSession | None = None) -> np.ndarray:
        return (session or self.session).run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]


class OnnxRanker(_OnnxModel):
    """Cross-encoder: relevance of each text to a query; higher is more relevant."""

    spec: CrossEncoderSpec

    @property
    def first_stage_scale(self) -> float:
        """How many times the embedder's query-text cosine belongs in this ranker's relevance
        (0: its logit alone). A ranker trained as a correction to the first stage has one;
        `MemoryStore.search(rerank=True)` adds it."""
        return self.spec.first_stage_scale

    def score(self, query: str, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """float32 [len(texts)]: one logit per (query, text) pair, in the order of `texts`."""
        texts = list(texts)
        out = np.zeros(len(texts), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch([(query, t) for t in texts])
        session = self.sessions.for_rows(len(texts))
        for idx in _length_batches([len(e.ids) for e in encodings], batch_size):
            feeds = pad_batch([encodings[i].ids for i in idx], self._pad, [encodings[i].type_ids for i in idx])
            out[idx] = self._run(feeds, session).reshape(-1)
        return out


class OnnxClassifier(_OnnxModel):
    """Sequence classifier: each text -> (label, softmax confidence)."""

    spec: SequenceClassifierSpec

    def probabilities(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """float32 [len(texts), len(labels)], columns in `spec.labels` order."""
        texts = list(texts)
        out = np.zeros((len(texts), len(self.spec.labels)), dtype=np.float32)
        if not texts:
            return out
        encodings = self.tokenizer.encode_batch(texts)
        session = self.sessions.for_rows(len(texts))
        for idx in _length_batches([len(e.ids) for e in encodings], batch_size):
            out[idx] = softmax(self._run(pad_batch([encodings[i].ids for i in idx], self._pad), session))
        return out

    def classify(self, texts: list[str], batch_size: int = 64) -> list[tuple[str, float]]:
        """(label, confidence) per text; below the spec's threshold the fallback label answers,
        with the best class's confidence (how sure the model was of anything)."""
        probs = self.probabilities(texts, batch_size)
        labels, spec = self.spec.labels, self.spec
        out = []
        for row in probs:
            best = int(row.argmax())
            label = labels[best]
            if spec.fallback_label is not None and row[best] < spec.threshold:
                label = spec.fallback_label
            out.append((label, float(row[best])))
        return out


@dataclass(frozen=True)
class Span:
    """A tagged stretch of a text: `text[start:end]` is of entity type `label`."""

    start: int
    end: int
    label: str
    confidence: float


class OnnxTokenClassifier(_OnnxModel):
    """Token tagger: each text -> character spans of the spec's span labels."""

    spec: TokenClassifierSpec

    def spans(self, texts: list[str], batch_size: int = 32) -> list[list[Span]]:
        texts = list(texts)
        if not texts:
            return []
        encodings = self.tokenizer.encode_batch(texts)
        out: list[list[Span]] = [[] for _ in texts]
        session = self.sessions.for_rows(len(texts))
        for idx in _length_batches([len(e.ids) for e in encodings], batch_size):
            probs = softmax(self._run(pad_batch([encodings[i].ids for i in idx], self._pad), session))
            for row, i in enumerate(idx):
                enc = encodings[i]
                out[i] = decode_spans(probs[row, :len(enc.ids)], enc.offsets, enc.special_tokens_mask,
                                      self.spec.labels, self.spec.scheme)
        return out


def decode_spans(probs: np.ndarray, offsets: list[tuple[int, int]], special: list[int], labels: list[str],
                 scheme: str = "BIO") -> list[Span]:
    """Join consecutive tokens of one entity type into character spans.

    BIO: a B- tag or a change of type starts a new span, I- of the same type extends it;
    IO: any run of one type is one span. Special tokens ([CLS], [SEP]) end a span. The
    span's confidence is the lowest token confidence inside it (one weak token, weak span).
    """
    spans: list[Span] = []
    current: list | None = None  # [start, end, type, min_conf]
    for k, (start, end) in enumerate(offsets):
        tag_index = int(probs[k].argmax())
        tag, conf = labels[tag_index], float(probs[k, tag_index])
        if special[k] or tag == "O" or start == end:
            if current:
                spans.append(Span(current[0], current[1], current[2], current[3]))
                current = None
            continue
        begins = scheme == "BIO" and tag.startswith("B-")
        kind = tag[2:] if scheme == "BIO" else tag
        if current and kind == current[2] and not begins:
            current[1], current[3] = end, min(current[3], conf)
        else:
            if current:
                spans.append(Span(current[0], current[1], current[2], current[3]))
            current = [start, end, kind, conf]
    if current:
        spans.append(Span(current[0], current[1], current[2], current[3]))
    return spans


def planner_source(spec: PlannerSpec | CausalPlannerSpec, goal: str, context: list[str] | None,
                   similar: tuple[str, list[str]] | None) -> str:
    """The planner's source text at run time, built as the training inputs were: `similar`
    joins it only for a planner trained to read one (`spec.reads_similar`)."""
    return model_input(goal, " ".join(context) if context else None,
                       similar_plan_text(*similar) if similar and spec.reads_similar else None)


class OnnxPlanner:
    """goal (+ context) -> ordered steps: the two planner graphs (export/planner.py) in a
    greedy loop. The encoder runs once per batch of goals; each new token is one decoder
    call that appends its keys and values to the cache (`present` becomes the next `past`)."""

    def __init__(self, root: Path, spec: PlannerSpec, precision: str, intra_op_threads: int = 1) -> None:
        if precision not in spec.onnx:
            raise BundleError(f"no precision {precision!r}; available: {', '.join(sorted(spec.onnx))}")
        self.root, self.spec, self.precision = Path(root), spec, precision
        self.tokenizer = Tokenizer.from_file(str(self.root / spec.tokenizer))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=spec.max_source_length)
        self._pad = pad_id(self.tokenizer)
        self.encoder = make_session(self.root / spec.onnx[precision], intra_op_threads)
        self.decoder = make_session(self.root / spec.decoder_onnx[precision], intra_op_threads)

    def start(self, sources: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(encoder attention mask, cross_kv, empty past) for a batch of source texts."""
        spec = self.spec
        feeds = pad_batch([e.ids for e in self.tokenizer.encode_batch(list(sources))], self._pad)
        mask = feeds["attention_mask"]
        cross = self.encoder.run(None, {"input_ids": feeds["input_ids"], "attention_mask": mask})[0]
        past = np.zeros((spec.layers, 2, len(sources), spec.heads, 0, spec.head_dim), dtype=np.float32)
        return mask, cross, past

    def step(self, tokens: np.ndarray, position: int, mask: np.ndarray, cross: np.ndarray,
             past: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One decoder call: the batch's current tokens [B, 1] at `position` -> (logits [B, V], past + 1)."""
        return self.decoder.run(None, {
            "input_ids": tokens, "position_ids": np.full((len(tokens), 1), position, dtype=np.int64),
            "encoder_attention_mask": mask, "cross_kv": cross, "past": past})

    def generate_ids(self, sources: list[str], max_new_tokens: int | None = None) -> list[list[int]]:
        """Greedy token ids per source text, up to and including the end token."""
        if not sources:
            return []
        spec, limit, batch = self.spec, max_new_tokens or self.spec.max_new_tokens, len(sources)
        mask, cross, past = self.start(sources)
        token = np.full((batch, 1), spec.decoder_start_token_id, dtype=np.int64)
        out: list[list[int]] = [[] for _ in range(batch)]
        done = np.zeros(batch, dtype=bool)
        for step in range(limit):
            logits, past = self.step(token, step, mask, cross, past)
            token = logits.argmax(axis=-1).astype(np.int64).reshape(batch, 1)
            for row in np.flatnonzero(~done):
                out[row].append(int(token[row, 0]))
            done |= token[:, 0] == spec.eos_token_id
            if done.all():
                break
        return out

    def plan(self, goal: str, context: list[str] | None = None,
             similar: tuple[str, list[str]] | None = None) -> list[str]:
        """Ordered steps for a goal; `similar` (a known plan's goal and steps, the closest
        procedure; used only by a planner trained to read one, `spec.reads_similar`) and
        `context` (relevant memories' texts) join the encoder input as in training
        (data/planner_dataset.model_input), cut to max_source_length tokens."""
        ids = self.generate_ids([planner_source(self.spec, goal, context, similar)])[0]
        return parse_steps(self.tokenizer.decode(ids, skip_special_tokens=True))


class GenaiPlanner:
    """goal (+ context) -> ordered steps from a decoder-only planner (export/planner_genai.py):
    onnxruntime-genai runs the graph and keeps the KV cache, greedy, one goal at a time; the
    prompt is tokenised here exactly as in training (training/planner.encode_batch)."""

    def __init__(self, root: Path, spec: CausalPlannerSpec, precision: str, intra_op_threads: int = 1) -> None:
        import json

        import onnxruntime_genai as og

        if precision not in spec.onnx:
            raise BundleError(f"no precision {precision!r}; available: {', '.join(sorted(spec.onnx))}")
        self.root, self.spec, self.precision = Path(root), spec, precision
        self.tokenizer = Tokenizer.from_file(str(self.root / spec.tokenizer))
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        config = og.Config(str((self.root / spec.onnx[precision]).parent))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {
            "intra_op_num_threads": intra_op_threads, "inter_op_num_threads": 1}}}}))
        self.model = og.Model(config)

    def prompt_ids(self, source: str) -> list[int]:
        ids = self.tokenizer.encode(source + self.spec.prompt_suffix, add_special_tokens=False).ids
        return ids[:self.spec.max_source_length]

    def start(self, prompt: list[int], max_new_tokens: int):
        """A greedy generator that has read `prompt` (its logits predict the first new token)."""
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        params.set_search_options(do_sample=False, num_beams=1, max_length=len(prompt) + max_new_tokens)
        generator = og.Generator(self.model, params)
        generator.append_tokens(prompt)
        return generator

    def decode(self, prompt: list[int], max_new_tokens: int | None = None) -> list[int]:
        """Greedy token ids after a tokenised prompt, up to and including the end token."""
        limit, stop = max_new_tokens or self.spec.max_new_tokens, set(self.spec.eos_token_ids)
        generator, ids = self.start(prompt, limit), []
        while len(ids) < limit:
            generator.generate_next_token()
            ids.append(int(generator.get_next_tokens()[0]))
            if ids[-1] in stop:
                break
        return ids

    def generate_ids(self, sources: list[str], max_new_tokens: int | None = None) -> list[list[int]]:
        """Greedy token ids per source text (one at a time), up to and including the end token."""
        return [self.decode(self.prompt_ids(source), max_new_tokens) for source in sources]

    def plan(self, goal: str, context: list[str] | None = None,
             similar: tuple[str, list[str]] | None = None) -> list[str]:
        """Ordered steps for a goal; `similar` and `context` join the prompt as in training."""
        ids = self.generate_ids([planner_source(self.spec, goal, context, similar)])[0]
        return parse_steps(self.tokenizer.decode(ids, skip_special_tokens=True))
