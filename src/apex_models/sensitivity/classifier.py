"""The sensitivity classifier at run time: rule detectors + the ONNX token classifier.

``SensitivityClassifier.load(folder).classify(text) -> (label, spans)`` is what the
hybrid runtime calls before a memory may leave the machine. It imports no torch:
onnxruntime runs the exported model, ``tokenizers`` supplies the character offsets that
map token predictions back to spans, and the detectors of
:mod:`apex_models.sensitivity.detectors` run beside the model. The final spans are the
union of both (a rule hit is never dropped because the model disagrees), and the label
follows from them: ``secret`` if any credential span, ``internal`` if any personal or
internal-infrastructure span, else ``public``.

The folder holds ``sensitivity.json`` (this module's manifest: files and their sha256,
labels, window size, the dev-tuned threshold), the ONNX files and ``tokenizer.json``;
a bundle that ships the model (``sensitivity``, a windowed token_classification spec)
serves the same classifier through :meth:`SensitivityClassifier.from_bundle`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from apex_models.sensitivity.detectors import PII_KINDS, find_sensitive
from apex_models.sensitivity.spans import SensitiveSpan, doc_label, spans_from_probs, union, windows

MANIFEST = "sensitivity.json"
FORMAT_VERSION = 1


class SensitivityModelError(RuntimeError):
    """The model folder is missing, tampered with, or of an unknown format."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def detector_spans(text: str) -> list[SensitiveSpan]:
    """The rule detectors' findings as spans: secret kinds -> SECRET, personal data -> PII."""
    return [SensitiveSpan(f.start, f.end, "PII" if f.kind in PII_KINDS else "SECRET", f.kind)
            for f in find_sensitive(text)]


def looks_binary(text: str, head: int = 8000) -> bool:
    """Binary content decoded as text: a NUL in the first `head` characters (git's test), or
    more than a tenth of them control or replacement characters.

    The model learnt from code and prose; on compressed or encoded bytes every high-entropy
    run looks like a key to it, so it does not read such text (the rules still do, as
    secret scanners skip binary files but a PEM block in a blob is still a key)."""
    sample = text[:head]
    if not sample:
        return False
    if "\x00" in sample:
        return True
    odd = sum(ch == "\ufffd" or (ch < " " and ch not in "\t\n\r\f") for ch in sample)
    return odd > len(sample) / 10


_BLOB_LINE = re.compile(r"[A-Za-z0-9+/]{60,}={0,2}")
_HEX = re.compile(r"[0-9a-fA-F]+")
_WRAPPING = " \t\"'+(),;\\"  # quotes and concatenation around one line of a wrapped blob


def on_blob_line(text: str, pos: int) -> bool:
    """Whether the line holding `pos` is nothing but a base64 run of 60 or more characters
    (quotes, `+` and a trailing `\\n` aside): one line of a wrapped key body, certificate,
    compressed or image blob.

    Such a line has no name or context for the model to read, so it cannot tell a key body
    from a data blob; private-key bodies are the private-key detector's, which sees the
    header. Shorter runs (a 40-character AWS secret alone on a line) and pure hex (a hex
    key) stay the model's. On the dev half of the CredSweeper samples, 42 model-only
    lines were such runs and none was an expected finding."""
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    line = text[start:len(text) if end < 0 else end].strip(_WRAPPING)
    if line.endswith("\\n"):
        line = line[:-2].rstrip(_WRAPPING)
    return bool(_BLOB_LINE.fullmatch(line)) and not _HEX.fullmatch(line)


def _off_blob_lines(text: str, span: SensitiveSpan) -> list[SensitiveSpan]:
    """The parts of `span` on lines that are not blob lines (a span may run across lines)."""
    pieces, pos = [], span.start
    while pos < span.end:
        newline = text.find("\n", pos, span.end)
        end = span.end if newline < 0 else newline
        if text[pos:end].strip() and not on_blob_line(text, pos):
            pieces.append((pos, end))
        pos = end + 1
    if pieces == [(span.start, span.end)]:
        return [span]
    return [replace(span, start=a, end=b) for a, b in pieces]


# Fixture and stand-in words, and the runs a person types when inventing a value. Narrower
# than detectors.is_placeholder, whose "%s" and two-letter tests would drop random passwords.
_FIXTURE = re.compile(r"(?i)example|dummy|fake|placeholder|changeme|x{5,}|\*{4,}|012345|123456|234567|345678|"
                      r"456789|987654|876543|765432|654321|543210|abcdef")
_AT_HOST = re.compile(r"(.+?)@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+(?::\d+)?(?:/\S*)?")
_HASH_OR_UUID = re.compile(r"(?:0x)?[0-9a-fA-F]{16,}|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
_CREDENTIAL_WORD = re.compile(r"(?i)pass|pwd|secret|token|key|auth|cred|api|private|session|bearer|access")
_VALUE_EDGES = " \t\"'`()[]{}<>,;\\"
_ESCAPE = re.compile(r"\\[nrt]")  # a written \n, \r or \t: the string literal's, not the value's
_DATA_URI = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*;base64,[A-Za-z0-9+/=]*$")
_PEM_HEADER = re.compile(r"\s*(?:-----|Proc-Type:|DEK-Info:)")


def plausible_model_secret(text: str, span: SensitiveSpan) -> bool:
    """Whether a model SECRET span's value could be a credential at all.

    The rules already refuse placeholders, hashes and PEM armour; the model, reading
    context more than shape, flags some of them. Dropped: placeholders and fixtures
    ("EXAMPLE", "fake", typed runs like 123456), values under 8 characters, values that
    one character makes up over 40% of, PEM armour lines (the private-key detector owns
    key blocks), and bare hex or UUIDs with no credential word on their line (hashes,
    ids). On the dev half of the CredSweeper samples this removed 25 model-only lines,
    one of them an expected finding. Also dropped: a hash between a string literal's
    written escapes (``"\\t<sha1>\\r\\n"``: the escapes are not the value), the payload of
    a ``data:<type>;base64,`` URI (an embedded file) and the ``Proc-Type``/``DEK-Info``
    lines of PEM armour (an encrypted key's IV, not the key).
    """
    if span.kind != "SECRET":
        return True
    value = _ESCAPE.sub(" ", text[span.start:span.end]).strip(_VALUE_EDGES)
    at_host = _AT_HOST.fullmatch(value)  # password@host grows into one span: the host says nothing of it
    if len(value) < 8 or _FIXTURE.search(at_host.group(1) if at_host else value):
        return False
    if len(value) >= 16 and max(value.count(ch) for ch in set(value)) > 0.4 * len(value):
        return False
    line_start = text.rfind("\n", 0, span.start) + 1
    line_end = text.find("\n", span.end)
    line = text[line_start:len(text) if line_end < 0 else line_end]
    if _PEM_HEADER.match(line) or _DATA_URI.search(text[line_start:span.start]):
        return False
    return not (_HASH_OR_UUID.fullmatch(value) and not _CREDENTIAL_WORD.search(line.replace(value, " ")))


@dataclass
class SensitivityClassifier:
    """ONNX token classifier + detectors. Build with :meth:`load`."""

    session: Any
    tokenizer: Any
    manifest: dict[str, Any]
    threshold: float
    precision: str = "int8"

    @classmethod
    def load(cls, folder: str | Path, precision: str = "auto", threads: int = 1,
             threshold: float | None = None, verify: bool = True) -> "SensitivityClassifier":
        """Open `folder`; refuse it when the manifest is unknown or a file's sha256 differs.

        `precision` ``auto`` takes the manifest's default: int8 when it passed its export
        gate, else fp32.
        """
        folder = Path(folder)
        manifest_path = folder / MANIFEST
        if not manifest_path.is_file():
            raise SensitivityModelError(f"{manifest_path} not found: not a sensitivity model folder")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format") != FORMAT_VERSION:
            raise SensitivityModelError(f"unknown sensitivity model format {manifest.get('format')!r}")
        files = manifest["files"]
        if precision == "auto":
            precision = manifest.get("default_precision", "int8")
        if precision not in files:
            raise SensitivityModelError(f"no {precision} model in {folder} (have {sorted(files)})")
        for key in (precision, "tokenizer"):
            path = folder / files[key]["path"]
            if not path.is_file():
                raise SensitivityModelError(f"{path} missing")
            if verify and _sha256(path) != files[key]["sha256"]:
                raise SensitivityModelError(f"{path.name}: sha256 does not match the manifest (tampered or stale)")
        return cls._open(folder / files[precision]["path"], folder / files["tokenizer"]["path"], manifest,
                         manifest["threshold"] if threshold is None else threshold, precision, threads)

    @classmethod
    def from_bundle(cls, bundle: Any, name: str = "sensitivity", precision: str = "auto", threads: int = 1,
                    threshold: float | None = None) -> "SensitivityClassifier":
        """The bundle's windowed token classifier (`load_bundle` has verified every file).

        `precision` ``auto`` takes the spec's default precision."""
        from tokenizers import Tokenizer

        spec = bundle.spec(name, "token_classification")
        chosen = bundle.resolve_precision(name, None if precision == "auto" else precision)
        if spec.stride is None or spec.threshold is None:
            raise SensitivityModelError(f"bundle model {name!r} is not a windowed sensitivity tagger "
                                        "(its spec has no stride or threshold)")
        vocab = Tokenizer.from_file(str(bundle.root / spec.tokenizer))
        special = {k: vocab.token_to_id(t) for k, t in (("cls", "[CLS]"), ("sep", "[SEP]"), ("pad", "[PAD]"))}
        if None in special.values():
            raise SensitivityModelError(f"{spec.tokenizer} lacks [CLS], [SEP] or [PAD]")
        manifest = {"labels": spec.labels, "max_length": spec.max_length, "stride": spec.stride,
                    "special": special, "default_precision": spec.default_precision}
        return cls._open(bundle.root / spec.onnx[chosen], bundle.root / spec.tokenizer, manifest,
                         spec.threshold if threshold is None else threshold, chosen, threads)

    @classmethod
    def _open(cls, onnx_path: Path, tokenizer_path: Path, manifest: dict[str, Any], threshold: float, precision: str,
              threads: int) -> "SensitivityClassifier":
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        tokenizer = Tokenizer.from_file(str(tokenizer_path))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        return cls(session, tokenizer, manifest, threshold, precision)

    def token_probs(self, text: str, batch_size: int = 16) -> tuple[list[tuple[int, int]], np.ndarray]:
        """(char offsets, [n_tokens, n_labels] probabilities) over the whole text.

        The text is cut into windows of ``max_length`` tokens overlapping by ``stride``;
        a token seen by several windows gets the mean of their probabilities.
        """
        m = self.manifest
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        ids, offsets = enc.ids, [tuple(o) for o in enc.offsets]
        n_labels = len(m["labels"])
        if not ids:
            return [], np.zeros((0, n_labels))
        spans = windows(len(ids), m["max_length"] - 2, m["stride"])
        total = np.zeros((len(ids), n_labels))
        count = np.zeros((len(ids), 1))
        cls_id, sep_id, pad_id = m["special"]["cls"], m["special"]["sep"], m["special"]["pad"]
        for b in range(0, len(spans), batch_size):
            chunk = spans[b:b + batch_size]
            width = max(e - s for s, e in chunk) + 2
            input_ids = np.full((len(chunk), width), pad_id, dtype=np.int64)
            mask = np.zeros((len(chunk), width), dtype=np.int64)
            for row, (s, e) in enumerate(chunk):
                input_ids[row, :e - s + 2] = [cls_id, *ids[s:e], sep_id]
                mask[row, :e - s + 2] = 1
            logits = self.session.run(None, {"input_ids": input_ids, "attention_mask": mask})[0]
            logits = logits - logits.max(axis=-1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=-1, keepdims=True)
            for row, (s, e) in enumerate(chunk):
                total[s:e] += probs[row, 1:e - s + 1]
                count[s:e] += 1
        return offsets, total / np.maximum(count, 1)

    def model_spans(self, text: str) -> list[SensitiveSpan]:
        """The model's spans above the threshold; none for binary content (:func:`looks_binary`),
        on lines that are one bare base64 run (:func:`on_blob_line`), or whose value cannot
        be a credential (:func:`plausible_model_secret`)."""
        if looks_binary(text):
            return []
        offsets, probs = self.token_probs(text)
        spans = spans_from_probs(offsets, probs, self.threshold, text) if offsets else []
        return [piece for span in spans for piece in _off_blob_lines(text, span)
                if plausible_model_secret(text, piece)]

    def classify(self, text: str) -> tuple[str, list[SensitiveSpan]]:
        """(``public``/``internal``/``secret``, sorted spans): the union of detectors and model."""
        spans = union(detector_spans(text) + self.model_spans(text))
        return doc_label(spans), spans

    def redact(self, text: str) -> str:
        """`text` with every sensitive span replaced by ``<SECRET>`` or ``<PII>``."""
        _, spans = self.classify(text)
        out, pos = [], 0
        for s in spans:
            out.append(text[pos:s.start])
            out.append(f"<{s.kind}>")
            pos = s.end
        out.append(text[pos:])
        return "".join(out)
