"""`apex` CLI: help, bundle verification errors, and a memory add/search round trip."""

from __future__ import annotations

import json
from pathlib import Path

from runtime_fixtures import copy_bundle, flip_byte
from typer.testing import CliRunner

from apex_models.cli import app

runner = CliRunner()
ENV = {"APEX_MEMORY_PASSPHRASE": "cli test passphrase"}


def test_help_lists_subcommands() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for word in ("bundle", "memory", "eval", "serve"):
        assert word in result.output
    serve_help = runner.invoke(app, ["serve", "--help"])
    assert serve_help.exit_code == 0 and "APEX_DATABASE_URL" in serve_help.output
    assert runner.invoke(app, ["serve"], env={"APEX_BUNDLE": ""}).exit_code != 0   # no bundle: a clear error
    memory_help = runner.invoke(app, ["memory", "--help"])
    assert memory_help.exit_code == 0
    for word in ("add", "search", "plan", "forget", "stats", "export"):
        assert word in memory_help.output
        sub_help = runner.invoke(app, ["memory", word, "--help"])
        assert sub_help.exit_code == 0 and "--passphrase-env" in sub_help.output


def test_every_command_summary_is_one_line_in_its_group_listing() -> None:
    """A group's --help lists each command by its help's first paragraph, line breaks kept
    (rich markup): a summary that runs over several source lines prints ragged."""
    import inspect

    import typer.main

    def commands(group, prefix: str = "apex"):
        for name, command in group.commands.items():
            yield f"{prefix} {name}", command
            if hasattr(command, "commands"):   # a group (typer ships its own click)
                yield from commands(command, f"{prefix} {name}")

    found = dict(commands(typer.main.get_command(app)))
    assert {"apex memory search", "apex sync status", "apex bundle verify"} <= set(found)
    ragged = {name: command.help for name, command in found.items()
              if "\n" in inspect.cleandoc(command.help or "").split("\n\n")[0]}
    assert not ragged


def test_bundle_verify_ok(minilm_bundle: Path) -> None:
    result = runner.invoke(app, ["bundle", "verify", str(minilm_bundle)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    on_disk = [p for p in minilm_bundle.rglob("*") if p.is_file() and p.name != "manifest.json"]
    assert summary["verified"] is True and summary["files"] == len(on_disk)
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
                                     "--tag", kind], env=ENV)
        assert result.exit_code == 0, result.output
        ids.append(json.loads(result.stdout)["id"])
    result = runner.invoke(app, ["memory", "search", *common, "how many reviews before shipping to prod",
                                 "-k", "2"], env=ENV)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert len(hits) == 2 and hits[0]["id"] == ids[0]
    assert hits[0]["tags"] == ["team", "process"] and hits[0]["kind"] == "process"
    assert hits[0]["why"]["retrievers"] and hits[0]["why"]["dense_rank"] == 1
    filtered = json.loads(runner.invoke(app, ["memory", "search", *common, "redis", "--kind",
                                              "convention"], env=ENV).stdout)
    assert [h["id"] for h in filtered] == [ids[2]]
    stats = json.loads(runner.invoke(app, ["memory", "stats", *common], env=ENV).stdout)
    assert stats["count"] == 3 and stats["kinds"] == {"architecture": 1, "convention": 1, "process": 1}

    linked = runner.invoke(app, ["memory", "add", *common, "Two approvals were agreed after the March outage.",
                                 "--kind", "decision", "--relation", f"explains:{ids[0]}"], env=ENV)
    assert linked.exit_code == 0, linked.output
    exported = json.loads(runner.invoke(app, ["memory", "export", *common], env=ENV).stdout)
    assert [m["id"] for m in exported][:3] == ids and len(exported) == 4
    assert exported[3]["relations"] == [{"relation": "explains", "id": ids[0], "direction": "out"}]
    out_file = tmp_path / "export.json"
    assert runner.invoke(app, ["memory", "export", *common, "--out", str(out_file)], env=ENV).exit_code == 0
    assert len(json.loads(out_file.read_text())) == 4 and out_file.stat().st_mode & 0o077 == 0

    forgot = runner.invoke(app, ["memory", "forget", *common, ids[1]], env=ENV)
    assert forgot.exit_code == 0 and json.loads(forgot.stdout) == {"forgotten": [ids[1]], "not_found": []}
    again = runner.invoke(app, ["memory", "forget", *common, ids[1]], env=ENV)
    assert again.exit_code == 1 and again.stderr.startswith(f"error: no memory {ids[1]}")
    assert json.loads(runner.invoke(app, ["memory", "stats", *common], env=ENV).stdout)["count"] == 3


def test_memory_wrong_precision_is_one_line(minilm_bundle: Path, tmp_path: Path) -> None:
    common = ["--store", str(tmp_path / "mem"), "--bundle", str(minilm_bundle)]
    assert runner.invoke(app, ["memory", "add", *common, "a note"], env=ENV).exit_code == 0
    result = runner.invoke(app, ["memory", "search", *common, "note", "--precision", "fp32"], env=ENV)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and "different embedder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_memory_key_and_store_errors_are_one_line(minilm_bundle: Path, tmp_path: Path) -> None:
    common = ["--store", str(tmp_path / "mem"), "--bundle", str(minilm_bundle)]

    def one_line_error(result, expected: str) -> None:
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("error: ") and expected in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and result.stdout == ""

    one_line_error(runner.invoke(app, ["memory", "search", *common, "x"], env=ENV), "no memory store at")
    one_line_error(runner.invoke(app, ["memory", "add", *common, "x"], env={"APEX_MEMORY_PASSPHRASE": ""}),
                   "no passphrase: set APEX_MEMORY_PASSPHRASE")
    assert runner.invoke(app, ["memory", "add", *common, "a note"], env=ENV).exit_code == 0
    one_line_error(runner.invoke(app, ["memory", "stats", *common], env={"APEX_MEMORY_PASSPHRASE": "wrong"}),
                   "wrong key for store")
    other = runner.invoke(app, ["memory", "stats", *common, "--passphrase-env", "MY_VAR"],
                          env={"MY_VAR": ENV["APEX_MEMORY_PASSPHRASE"]})
    assert other.exit_code == 0 and json.loads(other.stdout)["count"] == 1
    one_line_error(runner.invoke(app, ["memory", "stats", *common, "--passphrase-env", "UNSET_VAR_X"], env=ENV),
                   "no passphrase: set UNSET_VAR_X")


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


class _LengthRankerDouble:
    """Test double for Bundle.ranker(): prefers shorter texts."""

    def score(self, query: str, texts: list[str]):
        import numpy as np

        return -np.array([len(t) for t in texts], dtype=float)


class _DebugIntentDouble:
    """Test double for Bundle.intent(): every query is debug_error."""

    def classify(self, texts: list[str]) -> list[tuple[str, float]]:
        return [("debug_error", 0.9) for _ in texts]


def test_memory_search_rerank_and_intent(minilm_bundle: Path, tmp_path: Path, monkeypatch) -> None:
    from apex_models.runtime.bundle import Bundle

    common = ["--store", str(tmp_path / "mem"), "--bundle", str(minilm_bundle)]
    for text, kind in [("The payments worker retries failed charges three times before alerting.", "note"),
                       ("TimeoutError in payments worker", "error")]:
        assert runner.invoke(app, ["memory", "add", *common, text, "--kind", kind], env=ENV).exit_code == 0
    plain = json.loads(runner.invoke(app, ["memory", "search", *common, "payments worker"], env=ENV).stdout)
    assert all(h["why"]["intent"] is None and h["why"]["rerank_rank"] is None for h in plain)
    if not hasattr(Bundle, "ranker"):
        missing = runner.invoke(app, ["memory", "search", *common, "payments", "--rerank", "20"], env=ENV)
        assert missing.exit_code == 1 and missing.stderr.startswith("error: ") and "ranker" in missing.stderr
    monkeypatch.setattr(Bundle, "ranker", lambda self: _LengthRankerDouble(), raising=False)
    monkeypatch.setattr(Bundle, "intent", lambda self: _DebugIntentDouble(), raising=False)
    result = runner.invoke(app, ["memory", "search", *common, "payments worker", "--rerank", "20", "--intent"],
                           env=ENV)
    assert result.exit_code == 0, result.output
    hits = json.loads(result.stdout)
    assert hits[0]["kind"] == "error" and hits[0]["why"]["rerank_rank"] == 1  # shortest text
    assert hits[0]["why"]["intent"] == "debug_error" and hits[0]["why"]["intent_boost"] > 0
    assert hits[1]["why"]["intent_boost"] == 0.0 and hits[1]["why"]["rerank_rank"] == 2
