"""Signed bundles: a valid signature loads, any change after signing is refused."""

from __future__ import annotations

import json

import pytest
from runtime_fixtures import copy_bundle, flip_byte

from apex_models.export.signing import generate_keypair, sign_bundle
from apex_models.runtime import BundleError, load_bundle


@pytest.fixture()
def signed(minilm_bundle, tmp_path):
    bundle = copy_bundle(minilm_bundle, tmp_path / "bundle")
    private, public = generate_keypair(tmp_path / "keys")
    sign_bundle(bundle, private)
    return bundle, public, tmp_path


def test_signed_bundle_verifies_with_its_public_key(signed) -> None:
    bundle, public, _ = signed
    assert load_bundle(bundle, public_key=public).manifest.models["embedder"].dimension == 384
    assert load_bundle(bundle, public_key=public.read_bytes()).root == bundle


def test_changed_manifest_fails_the_signature(signed) -> None:
    bundle, public, _ = signed
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["profile"] = "forged"
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    load_bundle(bundle)  # hashes alone still pass: only the signature catches this
    with pytest.raises(BundleError, match="signature does not match"):
        load_bundle(bundle, public_key=public)


def test_changed_model_file_is_refused_even_when_signed(signed) -> None:
    bundle, public, _ = signed
    flip_byte(bundle / "embedder" / "model.int8.onnx")
    with pytest.raises(BundleError, match="model.int8.onnx does not match"):
        load_bundle(bundle, public_key=public)


def test_other_key_and_missing_signature(signed) -> None:
    bundle, _, tmp = signed
    _, other = generate_keypair(tmp / "other")
    with pytest.raises(BundleError, match="signature does not match"):
        load_bundle(bundle, public_key=other)
    (bundle / "manifest.sig").unlink()
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(bundle, public_key=other)


def test_keypair_is_never_overwritten(tmp_path) -> None:
    generate_keypair(tmp_path)
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path)
    assert (tmp_path / "bundle-signing.key").stat().st_mode & 0o077 == 0


def test_cli_keygen_sign_verify(minilm_bundle, tmp_path) -> None:
    from typer.testing import CliRunner

    from apex_models.cli import app

    runner = CliRunner()
    bundle = copy_bundle(minilm_bundle, tmp_path / "bundle")
    assert runner.invoke(app, ["bundle", "keygen", str(tmp_path / "keys")]).exit_code == 0
    key, pub = tmp_path / "keys" / "bundle-signing.key", tmp_path / "keys" / "bundle-signing.pub"
    assert runner.invoke(app, ["bundle", "sign", str(bundle), "--private-key", str(key)]).exit_code == 0
    ok = runner.invoke(app, ["bundle", "verify", str(bundle), "--public-key", str(pub)])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["signature_verified"] is True
    (bundle / "manifest.json").write_text((bundle / "manifest.json").read_text().replace("test", "prod"))
    bad = runner.invoke(app, ["bundle", "verify", str(bundle), "--public-key", str(pub)])
    assert bad.exit_code == 1 and "signature does not match" in bad.stderr
