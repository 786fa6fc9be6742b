"""Bundle verification: every file hashed, clear errors for each way a bundle can be wrong."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from runtime_fixtures import copy_bundle, flip_byte

from apex_models.runtime import BundleError, load_bundle
from apex_models.runtime.bundle import write_manifest


def test_valid_bundle_loads(minilm_bundle: Path) -> None:
    bundle = load_bundle(minilm_bundle)
    spec = bundle.manifest.models["embedder"]
    assert spec.dimension == 384
    assert set(spec.onnx) == {"fp32", "int8"}
    assert spec.default_precision == "int8"
    top = {f for f in bundle.manifest.files if not f.startswith("embedder/hf/")}
    assert top == {"embedder/model.fp32.onnx", "embedder/model.int8.onnx", "embedder/tokenizer.json",
                   "embedder/README.md"}
    assert "embedder/hf/model.safetensors" in bundle.manifest.files
    assert bundle.embedder().precision == "int8"
    assert bundle.embedder(precision="auto").precision == "int8"
    assert bundle.embedder(precision="fp32").precision == "fp32"
    manifest_text = (minilm_bundle / "manifest.json").read_text()
    assert str(minilm_bundle) not in manifest_text  # bundles are relocatable: relative paths only
    assert not any(Path(p).is_absolute() for p in bundle.manifest.files)


def test_tokenizer_has_no_fixed_padding(minilm_bundle: Path) -> None:
    tok = json.loads((minilm_bundle / "embedder" / "tokenizer.json").read_text())
    assert tok["padding"] is None and tok["truncation"] is None


def test_tampered_file_is_named(minilm_bundle: Path, tmp_path: Path) -> None:
    bundle_dir = copy_bundle(minilm_bundle, tmp_path / "b")
    flip_byte(bundle_dir / "embedder" / "model.int8.onnx")
    with pytest.raises(BundleError, match=r"embedder/model\.int8\.onnx.*expected sha256 [0-9a-f]{12}"):
        load_bundle(bundle_dir)
    load_bundle(bundle_dir, verify=False)  # opt-out is explicit


def test_missing_listed_file(minilm_bundle: Path, tmp_path: Path) -> None:
    bundle_dir = copy_bundle(minilm_bundle, tmp_path / "b")
    (bundle_dir / "embedder" / "README.md").unlink()
    with pytest.raises(BundleError, match=r"embedder/README\.md is missing"):
        load_bundle(bundle_dir)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="is not a bundle: manifest.json missing"):
        load_bundle(tmp_path)


def _write_raw_manifest(minilm_bundle: Path, tmp_path: Path, change) -> Path:
    bundle_dir = tmp_path / "b"
    bundle_dir.mkdir()
    raw = json.loads((minilm_bundle / "manifest.json").read_text())
    change(raw)
    (bundle_dir / "manifest.json").write_text(json.dumps(raw))
    return bundle_dir


def test_wrong_schema_version(minilm_bundle: Path, tmp_path: Path) -> None:
    bundle_dir = _write_raw_manifest(minilm_bundle, tmp_path, lambda m: m.update(schema_version=3))
    with pytest.raises(BundleError, match=r"bundle schema version 3 is not supported by this runtime \(supports 1, 2\)"):
        load_bundle(bundle_dir, verify=False)


def test_version_1_bundles_still_load(minilm_bundle: Path, tmp_path: Path) -> None:
    """Schema 1 held one embedder whose spec is exactly schema 2's embedding spec."""
    bundle_dir = copy_bundle(minilm_bundle, tmp_path / "b")
    raw = json.loads((bundle_dir / "manifest.json").read_text())
    (bundle_dir / "manifest.json").write_text(json.dumps({**raw, "schema_version": 1}))
    bundle = load_bundle(bundle_dir)
    assert bundle.manifest.schema_version == 1 and bundle.embedder().dimension == 384
    assert not bundle.has("ranker")


def test_invalid_manifest_names_field(minilm_bundle: Path, tmp_path: Path) -> None:
    bundle_dir = _write_raw_manifest(minilm_bundle, tmp_path,
                                     lambda m: m["models"]["embedder"].pop("dimension"))
    with pytest.raises(BundleError, match=r"models\.embedder\.dimension"):
        load_bundle(bundle_dir, verify=False)
    (bundle_dir / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="cannot be read as JSON"):
        load_bundle(bundle_dir)


def test_unknown_precision(minilm_bundle: Path) -> None:
    with pytest.raises(BundleError, match=r"no precision 'fp16'; available: fp32, int8"):
        load_bundle(minilm_bundle).embedder(precision="fp16")


def test_write_manifest_rejects_unlisted_reference(minilm_bundle: Path, tmp_path: Path) -> None:
    bundle_dir = copy_bundle(minilm_bundle, tmp_path / "b")
    raw = json.loads((bundle_dir / "manifest.json").read_text())
    raw["models"]["embedder"]["onnx"]["fp16"] = "embedder/model_fp16.onnx"
    with pytest.raises(BundleError, match="model_fp16.onnx"):
        write_manifest(bundle_dir, raw)
    # Rewriting the real manifest lists exactly the files present, then verifies.
    (bundle_dir / "embedder" / "extra.txt").write_text("shipped too")
    raw["models"]["embedder"]["onnx"].pop("fp16")
    written = write_manifest(bundle_dir, raw)
    assert "embedder/extra.txt" in written.files
    load_bundle(bundle_dir)
