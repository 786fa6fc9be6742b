"""A results file names a command that reproduces it, overrides included."""

from apex_models.config import compose, validate
from apex_models.evaluation.commands import config_overrides, reproduce_command


def test_default_config_needs_no_override() -> None:
    params = validate(compose("default"))
    assert config_overrides(params) == []
    assert reproduce_command(params, ["train_intent", "evaluate_intent"]) == (
        "python pipelines/compose.py --profile default && python pipelines/train_intent.py"
        " && python pipelines/evaluate_intent.py")


def test_overrides_are_written_back() -> None:
    params = validate(compose("default", ["ranker.eval.cosqa_queries=200", "intent.train.max_steps=50"]))
    assert config_overrides(params) == ["intent.train.max_steps=50", "ranker.eval.cosqa_queries=200"]
