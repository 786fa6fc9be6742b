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
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ValidationError

from apex_models.hashing import sha256_file

if TYPE_CHECKING:
    from apex_models.runtime.embedder import OnnxEmbedder

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"  # optional ed25519 signature of manifest.json (base64)


class BundleError(Exception):
    """A bundle is missing, malformed, unsupported or does not match its manifest."""


class FileEntry(BaseModel):
    sha256: str
    bytes: int


class ModelSpec(BaseModel):
    task: str
    base_model: str
    dimension: int
    pooling: str = "mean"
    normalize: bool = True
    query_max_length: int
    doc_max_length: int
    tokenizer: str
    onnx: dict[str, str]
    default_precision: str
    default_reason: str = ""
    card: str | None = None
    metrics: dict[str, Any] = {}
    parity: dict[str, Any] = {}
    mlflow_run_id: str | None = None
    # Full precision in Hugging Face layout (transformers and sentence-transformers load
    # it): a folder relative to the bundle root, its files listed in `files` like any other.
    safetensors_dir: str | None = None

    def referenced_files(self) -> list[str]:
        """Every bundle-relative path this model needs at run time (or documents)."""
        paths = [self.tokenizer, *self.onnx.values()]
        if self.safetensors_dir:
            paths.append(f"{self.safetensors_dir}/model.safetensors")
        return paths + ([self.card] if self.card else [])


class Manifest(BaseModel):
    schema_version: Literal[1]
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
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
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
    if version != SCHEMA_VERSION:
        raise BundleError(f"bundle schema version {version} is not supported by this runtime "
                          f"(supports {SCHEMA_VERSION})")
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
    """A loaded (and normally verified) bundle: its folder and its manifest."""

    root: Path
    manifest: Manifest

    def spec(self, name: str = "embedder") -> ModelSpec:
        try:
            return self.manifest.models[name]
        except KeyError:
            raise BundleError(f"bundle has no model {name!r}; it has {sorted(self.manifest.models)}") from None

    def resolve_precision(self, name: str = "embedder", precision: str | None = None) -> str:
        """None or "auto" -> the manifest's default; an unknown precision is an error."""
        spec = self.spec(name)
        chosen = spec.default_precision if precision in (None, "auto") else precision
        if chosen not in spec.onnx:
            raise BundleError(f"model {name!r} has no precision {chosen!r}; "
                              f"available: {', '.join(sorted(spec.onnx))}")
        return chosen

    def embedder(self, name: str = "embedder", precision: str | None = None,
                 intra_op_threads: int = 1) -> "OnnxEmbedder":
        from apex_models.runtime.embedder import OnnxEmbedder

        spec = self.spec(name)
        if spec.task != "embedding":
            raise BundleError(f"model {name!r} is a {spec.task!r} model, not an embedding model")
        chosen = self.resolve_precision(name, precision)
        entry = self.manifest.files.get(spec.onnx[chosen])
        return OnnxEmbedder(self.root, spec, chosen, intra_op_threads=intra_op_threads,
                            onnx_sha256=entry.sha256 if entry else None)
