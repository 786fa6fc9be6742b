"""The Ray Tune sweep: two trials of the tiny recipe, each a nested MLflow run with a dev score."""

from __future__ import annotations

import pytest

from apex_models.config import compose, validate


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from apex_models.evaluation.retrieval import write_beir
    from apex_models.data.ranker_dataset import stdlib_pairs
    from apex_models.data.task_data import write_split

    root = tmp_path_factory.mktemp("sweep-data")
    pairs = stdlib_pairs(120)
    write_split(root / "train", pairs[:80])
    held = pairs[80:]
    write_beir(root / "dev", {f"d{i}": p["code"] for i, p in enumerate(held)},
               {f"q{i}": p["query"] for i, p in enumerate(held[:20])}, {f"q{i}": {f"d{i}": 1} for i in range(20)})
    return root


def test_apply_overrides_sets_dotted_keys_and_refuses_unknown_ones() -> None:
    from apex_models.training.sweep import apply_overrides

    params = validate(compose("tiny"))
    out = apply_overrides(params, {"embedder.lora.r": 4, "embedder.train.lr": 3e-4})
    assert (out.embedder.lora.r, out.embedder.train.lr) == (4, 3e-4)
    assert params.embedder.lora.r != 4  # a copy: the original is untouched
    with pytest.raises(KeyError, match="lora.rank"):
        apply_overrides(params, {"embedder.lora.rank": 4})


# About 40 s on a 2-core machine at load 3.5 (Ray start, two 2-step trials); minutes when it is saturated.
def test_two_trials_nested_under_the_sweep_run(tmp_path, data) -> None:
    import mlflow
    import ray

    from apex_models.training.sweep import run_sweep

    params = validate(compose("tiny", [
        "embedder.train.max_steps=2", "embedder.train.batch_size=8", "embedder.train.eval_every=2",
        "embedder.train.save_every=100", "embedder.train.eval_dev_queries=20", "embedder.train.log_every=1",
        "embedder.train.hard_negatives=0", "embedder.data.mix=null", "trainer.num_threads=1",
        "embedder.query_max_length=16", "embedder.doc_max_length=48", "embedder.train.doc_max_length=48",
        "evaluate.batch_size=32"]))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = mlflow.create_experiment("sweep-test", artifact_location=(tmp_path / "artifacts").as_uri())
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with mlflow.start_run(experiment_id=experiment, run_name="sweep") as parent:
            result = run_sweep(params, data / "train", data / "dev", None, tmp_path / "out", mlflow)
    finally:
        ray.shutdown()

    trials = result["trials"]
    assert len(trials) == 2
    space = params.sweep.space
    for trial in trials:
        assert space["embedder.train.lr"].low <= trial["config"]["embedder.train.lr"] <= space["embedder.train.lr"].high
        assert trial["config"]["embedder.lora.r"] in space["embedder.lora.r"].values
        assert 0.0 < trial["best_dev_mrr@10"] <= 1.0  # a real dev score from the recipe
    assert result["best"] == max(trials, key=lambda t: t["best_dev_mrr@10"])
    runs = mlflow.search_runs([experiment], output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_id for r in children) == sorted(t["mlflow_run_id"] for t in trials)
    for run in children:
        assert "dev/mrr_at_10" in run.data.metrics and "train/loss" in run.data.metrics
        assert float(run.data.params["embedder.lora.r"]) in space["embedder.lora.r"].values


def test_set_pairs_read_as_yaml_and_a_bare_key_fails() -> None:
    from apex_models.training.sweep import parse_sets

    assert parse_sets(["planner.train.lr=5.0e-4", "trainer.deepspeed=null", "trainer.mixed_precision='no'",
                       "embedder.lora.target_modules=[query, value]"]) == {
        "planner.train.lr": 5e-4, "trainer.deepspeed": None, "trainer.mixed_precision": "no",
        "embedder.lora.target_modules": ["query", "value"]}
    assert parse_sets(["trainer.mixed_precision=no"]) == {"trainer.mixed_precision": False}   # YAML 1.1: quote it
    with pytest.raises(SystemExit, match="key=value"):
        parse_sets(["planner.train.lr"])
