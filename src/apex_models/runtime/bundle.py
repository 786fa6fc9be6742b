"""The bundle contract: a folder with manifest.json that lists and hashes every file.

An application loads a bundle with `load_bundle`; every file is verified against the
manifest first, so a truncated download or a tampered model fails loudly instead of
producing wrong vectors. Imports no torch or transformers (runtime extra only).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from apex_models.hashing import sha256_file

if TYPE_CHECKING:
    from apex_models.runtime.embedder import OnnxEmbedder
    from apex_models.runtime.models import GenaiPlanner, OnnxClassifier, OnnxPlanner, OnnxRanker, OnnxTokenClassifier

SCHEMA_VERSION = 2
# Version 1 bundles held one embedder whose spec has exactly version 2's embedding fields,
# so this runtime still reads them; anything else is refused with an "upgrade" message.
SUPPORTED_SCHEMA_VERSIONS = (1, 2)
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"  # optional ed25519 signature of manifest.json (base64)


class BundleError(Exception):
    """A bundle is missing, malformed, unsupported or does not match its manifest."""


class FileEntry(BaseModel):
    sha256: str
    bytes: int


class _SpecBase(BaseModel):
    """What every exported model has, whatever its task: files, provenance, gates, metrics.

    Paths are relative to the bundle root. `onnx` maps precision -> graph file and
    `default_precision` names the one a runtime picks unless told otherwise (the export's
    accuracy gate may have chosen fp32, saying why in `default_reason`).
    """

    model_config = ConfigDict(extra="forbid")

    base_model: str
    tokenizer: str
    onnx: dict[str, str]
    default_precision: str
    default_reason: str = ""
    card: str | None = None
    metrics: dict[str, Any] = {}
    parity: dict[str, Any] = {}
    mlflow_run_id: str | None = None
    registry_version: str | None = None
    # Full precision in Hugging Face layout (transformers loads it, and sentence-transformers
    # for the embedder): a folder relative to the bundle root, its files listed in `files`.
    safetensors_dir: str | None = None

    def precision_files(self, precision: str) -> list[str]:
        """The files that one precision runs from (what its size is the sum of)."""
        return [self.onnx[precision]]

    def moved_under(self, prefix: str) -> dict[str, Any]:
        """This spec's path fields with `prefix/` in front (its place inside a bundle), as a
        model_copy update; a spec with more file fields adds them."""
        return {"tokenizer": f"{prefix}/{self.tokenizer}", "onnx": {p: f"{prefix}/{f}" for p, f in self.onnx.items()},
                "safetensors_dir": f"{prefix}/{self.safetensors_dir}" if self.safetensors_dir else None}

    def referenced_files(self) -> list[str]:
        """Every bundle-relative path this model needs at run time (or documents)."""
        paths = [self.tokenizer, *self.onnx.values()]
        if self.safetensors_dir:
            paths.append(f"{self.safetensors_dir}/model.safetensors")
        return paths + ([self.card] if self.card else [])


class EmbeddingSpec(_SpecBase):
    """Bi-encoder: graph (input_ids, attention_mask) -> `sentence_embedding` [batch, dimension],
    pooled (and unit-normalised when `normalize`) inside the graph."""

    task: Literal["embedding"] = "embedding"
    dimension: int
    pooling: str = "mean"
    normalize: bool = True
    query_max_length: int
    doc_max_length: int


class CrossEncoderSpec(_SpecBase):
    """Ranker: graph (input_ids, attention_mask, token_type_ids) of a tokenised (query, text)
    pair -> `score` [batch], one relevance logit per pair (higher is more relevant)."""

    task: Literal["cross_encoder"] = "cross_encoder"
    max_length: int
    # A ranker trained as a correction to the first stage: its relevance is
    # first_stage_scale * (the embedder's query-text cosine) + its logit. 0: the logit alone.
    first_stage_scale: float = Field(default=0.0, ge=0)


class SequenceClassifierSpec(_SpecBase):
    """Text classifier: graph (input_ids, attention_mask) -> `logits` [batch, len(labels)].

    The runtime turns logits into softmax confidences; when the best confidence is below
    `threshold` the answer is `fallback_label` (e.g. out_of_scope), as tuned on dev data.
    """

    task: Literal["sequence_classification"] = "sequence_classification"
    max_length: int
    labels: list[str]
    fallback_label: str | None = None
    threshold: float = 0.0

    @model_validator(mode="after")
    def _fallback_is_a_label(self) -> "SequenceClassifierSpec":
        if self.fallback_label is not None and self.fallback_label not in self.labels:
            raise ValueError(f"fallback_label {self.fallback_label!r} is not one of labels")
        return self


class TokenClassifierSpec(_SpecBase):
    """Token tagger: graph (input_ids, attention_mask) -> `logits` [batch, sequence, len(labels)].

    `labels` are per-token tags in `scheme` ("BIO": O, B-X, I-X; "IO": O, X); the runtime
    joins tagged tokens into character spans of the entity types `span_labels` using the
    tokenizer's offsets. `document_labels`, when given, are the text-level classes a model
    derives from its spans (e.g. public / internal / secret), in increasing severity.
    """

    task: Literal["token_classification"] = "token_classification"
    max_length: int
    labels: list[str]
    scheme: Literal["BIO", "IO"] = "BIO"
    span_labels: list[str]
    document_labels: list[str] = []
    # Windowed reading (the sensitivity model): a text longer than max_length tokens is cut
    # into windows of max_length overlapping by `stride` tokens, and a token is tagged when
    # its best non-O probability reaches `threshold` (apex_models.sensitivity.classifier).
    stride: int | None = None
    threshold: float | None = None

    @model_validator(mode="after")
    def _tags_match_spans(self) -> "TokenClassifierSpec":
        if "O" not in self.labels:
            raise ValueError("token labels must include the outside tag 'O'")
        for tag in self.labels:
            if tag == "O":
                continue
            kind = tag[2:] if self.scheme == "BIO" and tag[:2] in ("B-", "I-") else tag
            if self.scheme == "BIO" and tag[:2] not in ("B-", "I-"):
                raise ValueError(f"BIO tag {tag!r} must start with B- or I-")
            if kind not in self.span_labels:
                raise ValueError(f"tag {tag!r} names {kind!r}, which is not in span_labels")
        return self


class PlannerSpec(_SpecBase):
    """Encoder-decoder generator with a KV cache (export/planner.py): `onnx` maps precision
    -> the encoder graph (input_ids, attention_mask) -> `cross_kv`, `decoder_onnx` precision
    -> the one-token decoder step (input_ids, position_ids, encoder_attention_mask,
    cross_kv, past) -> (`logits`, `present`). Greedy decoding starts from
    `decoder_start_token_id` with an empty past of [layers, 2, batch, heads, 0, head_dim]
    and stops at `eos_token_id` or after `max_new_tokens`."""

    task: Literal["seq2seq_generation"] = "seq2seq_generation"
    decoder_onnx: dict[str, str]
    max_source_length: int
    max_new_tokens: int
    decoder_start_token_id: int
    eos_token_id: int
    reads_similar: bool = False      # trained with a similar known plan in its input (planner.data.retrieve)
    layers: int
    heads: int
    head_dim: int

    @model_validator(mode="after")
    def _a_decoder_per_encoder(self) -> "PlannerSpec":
        if set(self.decoder_onnx) != set(self.onnx):
            raise ValueError(f"decoder_onnx precisions {sorted(self.decoder_onnx)} differ from onnx's "
                             f"{sorted(self.onnx)}")
        return self

    def precision_files(self, precision: str) -> list[str]:
        return [self.onnx[precision], self.decoder_onnx[precision]]

    def moved_under(self, prefix: str) -> dict[str, Any]:
        return {**super().moved_under(prefix), "decoder_onnx": {p: f"{prefix}/{f}" for p, f in self.decoder_onnx.items()}}

    def referenced_files(self) -> list[str]:
        return super().referenced_files() + list(self.decoder_onnx.values())


class CausalPlannerSpec(_SpecBase):
    """Decoder-only generator (the gpu profile's planner, export/planner_genai.py): per
    precision an onnxruntime-genai model folder, `onnx` naming its graph and `genai_files`
    the rest of it (external weights, genai_config.json with the KV-cache layout). The
    prompt is the model input plus `prompt_suffix`, tokenised without special tokens and
    cut to `max_source_length` tokens; greedy decoding stops at one of `eos_token_ids` or
    after `max_new_tokens`."""

    task: Literal["causal_generation"] = "causal_generation"
    genai_files: dict[str, list[str]]
    max_source_length: int
    max_new_tokens: int
    prompt_suffix: str
    eos_token_ids: list[int]
    reads_similar: bool = False      # trained with a similar known plan in its input (planner.data.retrieve)

    @model_validator(mode="after")
    def _files_for_every_graph(self) -> "CausalPlannerSpec":
        if set(self.genai_files) != set(self.onnx):
            raise ValueError(f"genai_files precisions {sorted(self.genai_files)} differ from onnx's "
                             f"{sorted(self.onnx)}")
        return self

    def precision_files(self, precision: str) -> list[str]:
        return [self.onnx[precision], *self.genai_files[precision]]

    def moved_under(self, prefix: str) -> dict[str, Any]:
        return {**super().moved_under(prefix),
                "genai_files": {p: [f"{prefix}/{f}" for f in files] for p, files in self.genai_files.items()}}

    def referenced_files(self) -> list[str]:
        return super().referenced_files() + [f for files in self.genai_files.values() for f in files]


# One entry per task, told apart by `task`: adding a model to a bundle is one more entry in
# the manifest's `models`, and a new kind of model is one more spec class here.
ModelSpec = Annotated[Union[EmbeddingSpec, CrossEncoderSpec, SequenceClassifierSpec, TokenClassifierSpec,
                            PlannerSpec, CausalPlannerSpec], Field(discriminator="task")]
TASKS = ("embedding", "cross_encoder", "sequence_classification", "token_classification", "seq2seq_generation",
         "causal_generation")
_SPEC_ADAPTER: TypeAdapter = TypeAdapter(ModelSpec)


def parse_model_spec(data: dict[str, Any] | str | bytes) -> "EmbeddingSpec | CrossEncoderSpec | SequenceClassifierSpec | TokenClassifierSpec | PlannerSpec | CausalPlannerSpec":
    """A spec from a dict or JSON text, its class chosen by `task` (BundleError when invalid)."""
    try:
        if isinstance(data, (str, bytes)):
            return _SPEC_ADAPTER.validate_json(data)
        return _SPEC_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise BundleError(f"invalid model spec: {_describe_validation_error(exc)}") from exc


class Manifest(BaseModel):
    schema_version: Literal[1, 2]
    bundle_version: str
    created_at: str
    git_commit: str
    profile: str
    data_hashes: dict[str, str] = {}
    models: dict[str, ModelSpec]
    files: dict[str, FileEntry]


def _describe_validation_error(exc: ValidationError) -> str:
    """One line naming each bad field (dotted path) and why, for a readable BundleError."""
    parts = []
    for err in exc.errors():
        # A spec's location carries its `task` tag (models.ranker.cross_encoder.max_length):
        # dropped, so the message names the field as it appears in the manifest.
        field = ".".join(str(p) for p in err["loc"] if p not in TASKS) or "<root>"
        parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)


def _hash_files(bundle_dir: Path) -> dict[str, FileEntry]:
    files = {}
    for path in sorted(p for p in bundle_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(bundle_dir).as_posix()
        # The manifest cannot list itself; a temp file left by an interrupted write is not content.
        if rel in (MANIFEST_NAME, SIGNATURE_NAME) or (path.name.startswith(".manifest.") and path.name.endswith(".tmp")):
            continue
        files[rel] = FileEntry(sha256=sha256_file(path), bytes=path.stat().st_size)
    return files


def write_manifest(bundle_dir: Path, manifest: dict) -> Manifest:
    """Hash every file under `bundle_dir`, validate, and write manifest.json atomically.

    `manifest` is everything but `files` (a given `files` is replaced): listing files by
    walking the folder means nothing shipped can escape verification. The write goes
    through a temporary file and os.replace so a reader never sees half a manifest.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir} is not a folder")
    data = dict(manifest)
    data.setdefault("schema_version", SCHEMA_VERSION)
    data["files"] = {k: v.model_dump() for k, v in _hash_files(bundle_dir).items()}
    try:
        parsed = Manifest.model_validate(data)
    except ValidationError as exc:
        raise BundleError(f"invalid manifest: {_describe_validation_error(exc)}") from exc
    for name, spec in parsed.models.items():
        for rel in spec.referenced_files():
            if rel not in parsed.files:
                raise BundleError(f"model {name!r} references {rel!r}, which is not in the bundle")
        if spec.default_precision not in spec.onnx:
            raise BundleError(f"model {name!r}: default_precision {spec.default_precision!r} "
                              f"is not one of {sorted(spec.onnx)}")
    text = json.dumps(parsed.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(dir=bundle_dir, prefix=".manifest.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, bundle_dir / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return parsed


def _parse_manifest(path: Path) -> Manifest:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path} cannot be read as JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: the manifest must be a JSON object")
    # Checked before full validation: a newer bundle should say "upgrade", not "bad field".
    version = raw.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise BundleError(f"bundle schema version {version} is not supported by this runtime "
                          f"(supports {', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))}): upgrade apex-models")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        raise BundleError(f"{path}: invalid manifest: {_describe_validation_error(exc)}") from exc


def _safe_path(root: Path, rel: str) -> Path:
    """Resolve a manifest path inside the bundle; refuse absolute or escaping paths."""
    candidate = (root / rel).resolve()
    if Path(rel).is_absolute() or not candidate.is_relative_to(root.resolve()):
        raise BundleError(f"manifest path {rel!r} points outside the bundle")
    return candidate


def verify_files(root: Path, manifest: Manifest) -> None:
    """Check that every listed file exists with the listed sha256 and every model file is listed."""
    for rel, entry in manifest.files.items():
        path = _safe_path(root, rel)
        if not path.is_file():
            raise BundleError(f"bundle file {rel} is missing from {root}")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise BundleError(f"bundle file {rel} does not match the manifest: expected sha256 "
                              f"{entry.sha256[:12]}..., got {actual[:12]}...")
    for name, spec in manifest.models.items():
        for rel in spec.referenced_files():
            if rel not in manifest.files:
                raise BundleError(f"model {name!r} references {rel!r}, which the manifest does not list")


def load_public_key(key: bytes | str | Path):
    """An Ed25519 public key from PEM bytes, a PEM file path, or 32 raw bytes."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(key, (str, Path)):
        try:
            key = Path(key).expanduser().read_bytes()
        except OSError as exc:
            raise BundleError(f"cannot read public key {key}: {exc}") from exc
    if len(key) == 32:
        return Ed25519PublicKey.from_public_bytes(key)
    try:
        loaded = serialization.load_pem_public_key(key)
    except ValueError as exc:
        raise BundleError(f"not a PEM public key: {exc}") from exc
    if not isinstance(loaded, Ed25519PublicKey):
        raise BundleError("the public key is not an Ed25519 key")
    return loaded


def verify_signature(root: Path, public_key: bytes | str | Path) -> None:
    """Check manifest.sig against manifest.json; the manifest's hashes then cover every file."""
    import base64
    import binascii

    from cryptography.exceptions import InvalidSignature

    key = load_public_key(public_key)
    sig_path = root / SIGNATURE_NAME
    if not sig_path.is_file():
        raise BundleError(f"{root} is not signed ({SIGNATURE_NAME} missing) but a public key was given")
    try:
        signature = base64.b64decode(sig_path.read_text(encoding="ascii").strip(), validate=True)
        key.verify(signature, (root / MANIFEST_NAME).read_bytes())
    except (InvalidSignature, binascii.Error, ValueError):
        raise BundleError(f"{root}: the signature does not match manifest.json "
                          "(the bundle was changed after signing, or signed with another key)") from None


def load_bundle(path: str | Path, verify: bool = True, public_key: bytes | str | Path | None = None) -> "Bundle":
    """Open a bundle folder; with `verify` (the default) every file's hash is checked.

    With `public_key` the bundle must also carry a valid ed25519 signature of its
    manifest, which proves who built it (the hashes alone only prove it is intact).
    """
    root = Path(path).expanduser()
    manifest_path = root / MANIFEST_NAME
    if not root.is_dir():
        raise BundleError(f"{root} is not a bundle: the folder does not exist")
    if not manifest_path.is_file():
        raise BundleError(f"{root} is not a bundle: {MANIFEST_NAME} missing")
    if public_key is not None:
        verify_signature(root, public_key)
    manifest = _parse_manifest(manifest_path)
    if verify:
        verify_files(root, manifest)
    return Bundle(root=root, manifest=manifest)


@dataclass
class Bundle:
    """A loaded (and normally verified) bundle: its folder and its manifest.

    Each model is asked for by its manifest name; `embedder()`, `ranker()`, `intent()` and
    `planner()` are the names the pipeline ships, `classifier(name)` and `token_classifier(name)` open
    any other entry of those tasks. `has(name)` says whether a model is present.
    """

    root: Path
    manifest: Manifest

    def has(self, name: str) -> bool:
        """Whether the bundle ships a model under `name` (e.g. "ranker", "intent")."""
        return name in self.manifest.models

    @property
    def model_names(self) -> list[str]:
        return sorted(self.manifest.models)

    def spec(self, name: str = "embedder", task: str | None = None):
        try:
            spec = self.manifest.models[name]
        except KeyError:
            raise BundleError(f"bundle has no model {name!r}; it has {sorted(self.manifest.models)}") from None
        if task is not None and spec.task != task:
            raise BundleError(f"model {name!r} is a {spec.task!r} model, not a {task!r} model")
        return spec

    def resolve_precision(self, name: str = "embedder", precision: str | None = None) -> str:
        """None or "auto" -> the manifest's default; an unknown precision is an error."""
        spec = self.spec(name)
        chosen = spec.default_precision if precision in (None, "auto") else precision
        if chosen not in spec.onnx:
            raise BundleError(f"model {name!r} has no precision {chosen!r}; "
                              f"available: {', '.join(sorted(spec.onnx))}")
        return chosen

    def _open(self, name: str, task: str, precision: str | None):
        spec = self.spec(name, task)
        chosen = self.resolve_precision(name, precision)
        entry = self.manifest.files.get(spec.onnx[chosen])
        return spec, chosen, entry.sha256 if entry else None

    def embedder(self, name: str = "embedder", precision: str | None = None,
                 intra_op_threads: int = 1, bulk_threads: int | None = None) -> "OnnxEmbedder":
        """`intra_op_threads` for queries; `bulk_threads` for large batches (None: every usable core, up to 4)."""
        from apex_models.runtime.embedder import OnnxEmbedder

        spec, chosen, sha = self._open(name, "embedding", precision)
        return OnnxEmbedder(self.root, spec, chosen, intra_op_threads=intra_op_threads, onnx_sha256=sha,
                            bulk_threads=bulk_threads)

    def ranker(self, name: str = "ranker", precision: str | None = None,
               intra_op_threads: int = 1, bulk_threads: int | None = None) -> "OnnxRanker":
        """The cross-encoder: `.score(query, texts) -> np.ndarray` of relevance logits (a top-k
        of 16 or more runs on `bulk_threads`: None, every usable core up to 4)."""
        from apex_models.runtime.models import OnnxRanker

        spec, chosen, _ = self._open(name, "cross_encoder", precision)
        return OnnxRanker(self.root, spec, chosen, intra_op_threads=intra_op_threads, bulk_threads=bulk_threads)

    def classifier(self, name: str, precision: str | None = None,
                   intra_op_threads: int = 1, bulk_threads: int | None = None) -> "OnnxClassifier":
        """Any sequence classifier: `.classify(texts) -> [(label, confidence)]`."""
        from apex_models.runtime.models import OnnxClassifier

        spec, chosen, _ = self._open(name, "sequence_classification", precision)
        return OnnxClassifier(self.root, spec, chosen, intra_op_threads=intra_op_threads, bulk_threads=bulk_threads)

    def intent(self, name: str = "intent", precision: str | None = None,
               intra_op_threads: int = 1, bulk_threads: int | None = None) -> "OnnxClassifier":
        """The intent classifier: `.classify(texts) -> [(label, confidence)]`."""
        return self.classifier(name, precision, intra_op_threads, bulk_threads)

    def token_classifier(self, name: str, precision: str | None = None,
                         intra_op_threads: int = 1, bulk_threads: int | None = None) -> "OnnxTokenClassifier":
        """Any token tagger: `.spans(texts) -> [[Span]]` (character offsets into each text)."""
        from apex_models.runtime.models import OnnxTokenClassifier

        spec, chosen, _ = self._open(name, "token_classification", precision)
        return OnnxTokenClassifier(self.root, spec, chosen, intra_op_threads=intra_op_threads,
                                   bulk_threads=bulk_threads)

    def planner(self, name: str = "planner", precision: str | None = None,
                intra_op_threads: int = 1) -> "OnnxPlanner | GenaiPlanner":
        """The planner: `.plan(goal, context, similar=None) -> [step]`, greedy decoding with a KV cache (an
        encoder-decoder through ONNX Runtime, or a decoder-only LM through onnxruntime-genai)."""
        from apex_models.runtime.models import GenaiPlanner, OnnxPlanner

        task = self.spec(name).task
        if task not in ("seq2seq_generation", "causal_generation"):
            raise BundleError(f"model {name!r} is a {task!r} model, not a planner")
        spec, chosen, _ = self._open(name, task, precision)
        runtime = GenaiPlanner if task == "causal_generation" else OnnxPlanner
        return runtime(self.root, spec, chosen, intra_op_threads=intra_op_threads)
