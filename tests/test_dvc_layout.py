"""dvc.yaml and pipelines/ stay consistent: every stage's script exists, every declared
param exists in params.yaml, and no entry point shadows an installed package."""

from __future__ import annotations

import importlib.util
from functools import reduce

import yaml


def test_stage_scripts_and_params_exist(repo_root) -> None:
    stages = yaml.safe_load((repo_root / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    for name, stage in stages.items():
        script = stage["cmd"].split()[1]
        assert (repo_root / script).is_file(), f"{name}: {script} missing"
        for key in stage.get("params", []):
            assert reduce(lambda d, k: d[k], key.split("."), params) is not None or key.endswith("signing_key"), key


def test_no_entry_point_shadows_a_package(repo_root) -> None:
    """`python pipelines/x.py` puts pipelines/ first on sys.path: x must not be a package name."""
    for script in (repo_root / "pipelines").glob("*.py"):
        spec = importlib.util.find_spec(script.stem)
        real = spec is not None and spec.origin is not None  # a bare folder (namespace) shadows nothing
        assert not real, f"pipelines/{script.name} shadows the installed `{script.stem}`"
