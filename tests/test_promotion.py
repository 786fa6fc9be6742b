"""Promotion: the champion alias moves only on a real gain; rejections say why."""

from __future__ import annotations

import mlflow
import pytest

from apex_models.training.promotion import CHAMPION, current_champion, decide, register_version


@pytest.fixture()
def client(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("promotion-test")
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri("")


def _candidate(client, value: float):
    with mlflow.start_run() as run:
        mlflow.log_text("weights", "merged_model/w.txt")
    return register_version(client, "emb", f"{run.info.artifact_uri}/merged_model", run.info.run_id,
                            "dev_mrr_at_10", value)


def test_first_version_becomes_champion(client) -> None:
    base = _candidate(client, 0.50)
    decision = decide(client, "emb", base, "dev_mrr_at_10", margin=0.005)
    assert decision.promoted and decision.reason == "no champion yet"
    assert str(current_champion(client, "emb").version) == str(base.version)


def test_champion_moves_only_beyond_the_margin(client) -> None:
    decide(client, "emb", _candidate(client, 0.50), "dev_mrr_at_10", 0.005)
    small = _candidate(client, 0.504)
    d = decide(client, "emb", small, "dev_mrr_at_10", 0.005)
    assert not d.promoted and "does not beat champion v1's 0.5000" in d.reason
    assert str(current_champion(client, "emb").version) == "1"
    run = client.get_run(small.run_id)
    assert run.data.tags["promotion"] == "rejected" and "does not beat" in run.data.tags["promotion_reason"]
    assert client.get_model_version("emb", small.version).tags["decision"] == "rejected"
    better = _candidate(client, 0.52)
    assert decide(client, "emb", better, "dev_mrr_at_10", 0.005).promoted
    champion = client.get_model_version_by_alias("emb", CHAMPION)
    assert str(champion.version) == str(better.version)
    assert mlflow.artifacts.download_artifacts(artifact_uri=champion.source).endswith("merged_model")


def test_over_baseline_needs_the_baseline_beaten_first(client) -> None:
    from apex_models.training.promotion import promote_over_baseline

    def candidate(value: float) -> dict:
        with mlflow.start_run() as run:
            mlflow.log_text("weights", "merged_model/w.txt")
        return promote_over_baseline(client, "rank", f"{run.info.artifact_uri}/merged_model", run.info.run_id,
                                     "min_ndcg_at_10_gain", value, "embedder_alone", 0.0, 0.01)

    worse = candidate(-0.3)   # below the embedder alone: registered, rejected, nothing ships
    assert worse["champion"] is None and not worse["decision"]["promoted"]
    assert "does not beat the baseline embedder_alone (0.0000) by the margin 0.01" in worse["decision"]["reason"]
    assert client.get_model_version("rank", worse["decision"]["candidate_version"]).tags["decision"] == "rejected"
    first = candidate(0.05)
    assert first["decision"]["promoted"] and first["champion"]["version"] == first["decision"]["candidate_version"]
    assert first["champion"]["source"] == f"models:/rank/{first['champion']['version']}"
    small = candidate(0.055)  # beats the baseline but not the champion by the margin
    assert not small["decision"]["promoted"] and small["champion"]["version"] == first["champion"]["version"]


def test_the_champion_evaluated_again_stays_champion_whatever_its_new_score(client) -> None:
    """A stage that re-evaluates the same trained weights (its code changed) registers a new
    version of the same run: it must not lose to its own older score and leave the bundle."""
    with mlflow.start_run() as run:
        mlflow.log_text("weights", "merged_model/w.txt")

    def again(value: float):
        version = register_version(client, "sens", f"{run.info.artifact_uri}/merged_model", run.info.run_id,
                                   "f1", value)
        return version, decide(client, "sens", version, "f1", margin=0.0)

    first, d1 = again(0.97)
    assert d1.promoted and d1.reason == "no champion yet"
    second, d2 = again(0.96)  # the same weights, a stricter evaluation
    assert d2.promoted and d2.reason == f"the same training run as champion v{first.version}, evaluated again (f1 0.9600): it stays champion"
    assert str(current_champion(client, "sens").version) == str(second.version)
    with mlflow.start_run() as other_run:  # another run must still beat the champion's current score
        mlflow.log_text("weights", "merged_model/w.txt")
    other = register_version(client, "sens", f"{other_run.info.artifact_uri}/merged_model", other_run.info.run_id,
                             "f1", 0.965)
    assert decide(client, "sens", other, "f1", 0.0).promoted
    third, d3 = again(0.99)  # the older run is no longer champion: compared as any candidate
    assert d3.promoted and "beats champion" in d3.reason
