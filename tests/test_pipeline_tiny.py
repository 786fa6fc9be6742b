"""The tiny profile's whole DAG, run by `dvc repro` in a temporary copy of the repo.

Each test asserts a real output of one stage; together they cover corpus -> bundle ->
runtime. Marked slow: the DAG takes a few minutes on two cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_ingest_records_are_licensed_and_hashed(tiny_dag: Path) -> None:
    from apex_models.hashing import sha256_bytes

    params = yaml.safe_load((tiny_dag / "params.yaml").read_text())
    allow = set(params["data"]["code"]["license_allowlist"])
    records = _jsonl(tiny_dag / "data/ingest/code.jsonl")
    assert len(records) > 20
    packages = {r["package"].lower().replace("_", "-") for r in records}
    assert {"six", "idna", "toolz"} <= packages
    for r in records[:200]:
        assert r["sha256"] == sha256_bytes(r["text"].encode("utf-8"))
        assert any(part.strip("() ") in allow for part in r["license"].replace(" AND ", " OR ").split(" OR "))
        assert r["path"].endswith(".py") and r["version"]


def test_datasets_split_by_package_without_leaks(tiny_dag: Path) -> None:
    from apex_models.data.task_data import read_split

    splits = {s: read_split(tiny_dag / f"data/datasets/embedder/{s}") for s in ("train", "dev", "test")}
    packages = {s: {r["package"] for r in rows} for s, rows in splits.items()}
    assert all(packages.values()), packages
    assert not packages["train"] & packages["test"] and not packages["train"] & packages["dev"]
    assert not packages["dev"] & packages["test"]
    report = json.loads((tiny_dag / "data/datasets/embedder/report.json").read_text())
    assert sum(len(rows) for rows in splits.values()) == sum(report["splits"][s]["pairs"] for s in splits)
    assert (tiny_dag / "data/datasets/embedder/NOTICE").read_text().strip()


def test_training_loss_falls(tiny_dag: Path) -> None:
    summary = json.loads((tiny_dag / "models/embedder/train_summary.json").read_text())
    losses = [loss for _, loss in summary["losses"]]
    third = max(1, len(losses) // 3)
    assert sum(losses[-third:]) / third < sum(losses[:third]) / third, losses
    assert summary["dev"], "dev selection ran"


def test_the_shipped_embedder_is_the_best_dev_step(tiny_dag: Path) -> None:
    """The recipe ships its best CoSQA dev step, the un-tuned base (step 0) included: when
    no trained step passed the base, the evaluated model must be the base, unchanged."""
    doc = json.loads((tiny_dag / "eval/results/embedder.json").read_text())
    assert doc["profile"] == "tiny" and doc["command"] and doc["machine"]["cores"]
    assert set(doc["results"]) >= {"cosqa-test", "cosqa-dev", "code-heldout"}
    train = json.loads((tiny_dag / "models/embedder/train_summary.json").read_text())
    best_trained = max(m for _, m in train["dev"])
    if train["best_step"] == 0:
        assert best_trained <= train["base_dev_mrr@10"], train["dev"]
        for bench, systems in doc["results"].items():
            assert systems["tuned"]["mrr@10"] == pytest.approx(systems["base"]["mrr@10"], abs=1e-4), bench
    else:
        assert train["best_dev_mrr@10"] == best_trained > train["base_dev_mrr@10"], train
    for system in ("bm25", "base", "tuned"):
        assert 0.0 < doc["results"]["cosqa-test"][system]["recall@100"] <= 1.0


def test_export_gates_passed(tiny_dag: Path) -> None:
    report = json.loads((tiny_dag / "eval/results/export-embedder.json").read_text())["results"]
    assert report["parity"]["fp32"]["min"] >= 0.9999
    assert report["parity"]["int8"]["min"] >= 0.98 and report["parity"]["int8"]["mean"] >= 0.99
    assert report["default_precision"] in {"fp32", "int8"} and report["default_reason"]


def test_bundle_loads_and_finds_a_planted_memory(tiny_dag: Path, tmp_path: Path) -> None:
    from apex_models.runtime import MemoryStore, load_bundle

    bundle = load_bundle(tiny_dag / "export/bundles/default")
    spec = bundle.manifest.models["embedder"]
    assert spec.dimension == 384 and bundle.manifest.profile == "tiny"
    assert spec.metrics["eval"]["code-heldout"]["tuned"]
    with MemoryStore.open(tmp_path / "store", bundle.embedder(), key=bytes(range(32))) as store:
        store.add_many([{"text": f"note {i}: the {w} service restarts nightly", "kind": "note"}
                        for i, w in enumerate(["billing", "search", "auth", "mail", "cache", "queue"])])
        planted = store.add("We pinned psycopg to 3.1 because 3.2 broke connection pooling on Alpine",
                            kind="decision")
        hits = store.search("why is the postgres driver version pinned?", k=3)
    assert hits[0].id == planted


def test_apex_eval_cli_prints_the_three_systems(tiny_dag: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tiny_dag / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "apex_models.cli", "eval", "retrieval",
                           "--bundle", "export/bundles/default", "--dataset", "data/benchmarks/code-heldout",
                           "--baselines"], cwd=tiny_dag, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert set(out) == {"bundle", "bm25", "base"}
    for metrics in out.values():
        assert set(metrics) == {"ndcg@10", "mrr@10", "recall@1", "recall@10", "recall@100"}
    stage = json.loads((tiny_dag / "eval/results/embedder.json").read_text())["results"]["code-heldout"]
    assert out["bm25"] == pytest.approx(stage["bm25"], abs=1e-6)   # one code path, same numbers
    assert out["base"]["mrr@10"] == pytest.approx(stage["base"]["mrr@10"], abs=0.02)


def test_dvc_reruns_only_what_changed(tiny_dag: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def status() -> dict:
        out = subprocess.run(["dvc", "status", "--json"], cwd=tiny_dag, env=env, capture_output=True,
                             text=True, check=True).stdout
        return json.loads(out)

    assert status() == {}
    params = tiny_dag / "params.yaml"
    original = params.read_text()
    try:
        data = yaml.safe_load(original)
        data["export"]["probe_texts"] = 8
        params.write_text(yaml.safe_dump(data, sort_keys=False))
        assert set(status()) == {"export"}   # bundle follows once export's outputs change
    finally:
        params.write_text(original)


def test_experiment_review_notebook_runs_on_the_store(tiny_dag: Path, repo_root: Path) -> None:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(repo_root / "notebooks" / "experiment_review.ipynb", as_version=4)
    os.environ["APEX_MLFLOW_URI"] = f"sqlite:///{tiny_dag / 'mlruns' / 'mlflow.db'}"
    try:
        NotebookClient(nb, timeout=300, kernel_name="python3",
                       resources={"metadata": {"path": str(tiny_dag)}}).execute()
    finally:
        os.environ.pop("APEX_MLFLOW_URI")
    text = "\n".join(o.get("text", "") or str(o.get("data", {}).get("text/plain", ""))
                     for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", []))
    assert "1 training runs plotted" in text
    assert "train_embedder" in text and "code-heldout" in text


def test_export_job_signs_a_bundle_of_the_champion(tiny_dag: Path, tmp_path: Path) -> None:
    """The CI export job, on the tiny DAG: champion -> gated, signed bundle that verifies."""
    from apex_models.export.signing import generate_keypair
    from apex_models.runtime import load_bundle

    private, public = generate_keypair(tmp_path / "keys")
    out = tmp_path / "bundle-v0"
    env = {**os.environ, "PYTHONPATH": str(tiny_dag / "src"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "export/job.py", "--out", str(out), "--sign-key", str(private)],
                          cwd=tiny_dag, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(proc.stdout)
    assert summary["signed"] is True
    promotion = json.loads((tiny_dag / "eval/results/promotion-embedder.json").read_text())["results"]
    assert summary["champion"]["version"] == promotion["champion"]["version"]
    manifest = load_bundle(out, public_key=public).manifest
    assert manifest.models["embedder"].metrics["champion"]["version"] == promotion["champion"]["version"]


def test_promotion_recorded_a_decision_for_the_candidate(tiny_dag: Path) -> None:
    promotion = json.loads((tiny_dag / "eval/results/promotion-embedder.json").read_text())["results"]
    decisions = promotion["decisions"]
    assert decisions[0]["reason"] == "no champion yet"        # the base model, registered first
    candidate = decisions[-1]
    assert candidate["reason"] and candidate["promoted"] in (True, False)
    assert promotion["champion"]["kind"] == ("fine-tuned" if candidate["promoted"] else "base")
