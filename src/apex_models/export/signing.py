"""Ed25519 signing of bundles: the export job signs manifest.json, runtimes verify it.

The manifest lists the sha256 of every file, so one signature over it covers the whole
bundle. The private key never enters the bundle; the public key is what applications
pin (`load_bundle(path, public_key=...)`).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from apex_models.runtime.bundle import MANIFEST_NAME, SIGNATURE_NAME, BundleError


def generate_keypair(out_dir: Path, name: str = "bundle-signing") -> tuple[Path, Path]:
    """Write `<name>.key` (PKCS8 PEM, mode 0600) and `<name>.pub` (PEM) into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = out_dir / f"{name}.key"
    public = out_dir / f"{name}.pub"
    if private.exists():
        raise FileExistsError(f"{private} exists; refusing to overwrite a signing key")
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def sign_bundle(bundle_dir: Path, private_key: Path | bytes) -> Path:
    """Write manifest.sig (base64 ed25519 signature of manifest.json's exact bytes)."""
    bundle_dir = Path(bundle_dir)
    pem = Path(private_key).read_bytes() if isinstance(private_key, (str, Path)) else private_key
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError("the signing key is not an Ed25519 private key")
    manifest = bundle_dir / MANIFEST_NAME
    if not manifest.is_file():
        raise BundleError(f"{bundle_dir} has no {MANIFEST_NAME} to sign")
    out = bundle_dir / SIGNATURE_NAME
    out.write_text(base64.b64encode(key.sign(manifest.read_bytes())).decode("ascii") + "\n", encoding="ascii")
    return out
