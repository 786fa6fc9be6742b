"""`apex` CLI: help, bundle verification errors, and a memory add/search round trip."""

from __future__ import annotations

import json
from pathlib import Path

from runtime_fixtures import copy_bundle, flip_byte
from typer.testing import CliRunner

from apex_models.cli import app

runner = CliRunner()


def test_help_lists_subcommands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for word in ("bundle", "memory", "eval"):
        assert word in result.output
    memory_help = runner.invoke(app, ["memory", "--help"])
    assert memory_help.exit_code == 0
    for word in ("add", "search", "stats"):
        assert word in memory_help.output


def test_bundle_verify_ok(minilm_bundle: Path) -> None:
    result = runner.invoke(app, ["bundle", "verify", str(minilm_bundle)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["verified"] is True and summary["files"] == 4
    assert summary["models"]["embedder"]["precisions"] == ["fp32", "int8"]


def test_bundle_verify_tampered(minilm_bundle: Path, tmp_path: Path) -> None:
    bundle_dir = copy_bundle(minilm_bundle, tmp_path / "b")
    flip_byte(bundle_dir / "embedder" / "model.int8.onnx")
    result = runner.invoke(app, ["bundle", "verify", str(bundle_dir)])
    assert result.exit_code == 1
    assert "embedder/model.int8.onnx does not match the manifest" in result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""


def test_bundle_verify_not_a_bundle(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bundle", "verify", str(tmp_path)])
    assert result.exit_code == 1
    assert "manifest.json missing" in result.stderr


def test_memory_add_search_stats(minilm_bundle: Path, tmp_path: Path) -> None:
    store = str(tmp_path / "mem")
    common = ["--store", store, "--bundle", str(minilm_bundle)]
    notes = [("Deploys to production need two approvals in the release channel.", "process"),
             ("The cache layer uses Redis with a five minute TTL.", "architecture"),
             ("Use pathlib instead of os.path in new code.", "convention")]
    ids = []
    for text, kind in notes:
        result = runner.invoke(app, ["memory", "add", *common, text, "--kind", kind, "--tag", "team",
                                     "--tag", kind])
        assert result.exit_code == 0, result.output
        ids.append(json.loads(result.stdout)["id"])
    result = runner.invoke(app, ["memory", "search", *common, "how many reviews before shipping to prod",
                                 "-k", "2"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 2 and hits[0]["id"] == ids[0]
    assert hits[0]["tags"] == ["team", "process"] and hits[0]["kind"] == "process"
    filtered = json.loads(runner.invoke(app, ["memory", "search", *common, "redis", "--kind",
                                              "convention"]).stdout)
    assert [h["id"] for h in filtered] == [ids[2]]
    stats = json.loads(runner.invoke(app, ["memory", "stats", *common]).stdout)
    assert stats["count"] == 3 and stats["kinds"] == {"architecture": 1, "convention": 1, "process": 1}


def test_memory_wrong_precision_is_one_line(minilm_bundle: Path, tmp_path: Path) -> None:
    common = ["--store", str(tmp_path / "mem"), "--bundle", str(minilm_bundle)]
    assert runner.invoke(app, ["memory", "add", *common, "a note"]).exit_code == 0
    result = runner.invoke(app, ["memory", "search", *common, "note", "--precision", "fp32"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "different embedder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_eval_retrieval_uses_the_runtime_contract(minilm_bundle: Path, tmp_path: Path) -> None:
    from apex_models.evaluation.retrieval import write_beir

    corpus = {"d1": "def reverse(xs): return xs[::-1]", "d2": "import json; json.loads(raw)",
              "d3": "with open(p) as fh: lines = fh.readlines()"}
    queries = {"q1": "reverse a list", "q2": "parse a json string", "q3": "read lines of a file"}
    write_beir(tmp_path / "beir", corpus, queries, {"q1": {"d1": 1}, "q2": {"d2": 1}, "q3": {"d3": 1}})
    result = runner.invoke(app, ["eval", "retrieval", "--bundle", str(minilm_bundle),
                                 "--dataset", str(tmp_path / "beir"), "--precision", "fp32"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["bundle"]
    assert scores["recall@1"] == 1.0
