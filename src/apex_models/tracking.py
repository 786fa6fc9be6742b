"""Every training, evaluation and export stage is one MLflow run.

A run records the resolved config (the sections the stage reads, plus the whole file as
an artifact), the git commit, and the sha256 of the data it read, so any number in
eval/results can be traced back to exactly what produced it.
"""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from apex_models.config import REPO_ROOT, Params
from apex_models.hashing import sha256_tree


def git_commit(root: Path = REPO_ROOT) -> str:
    """HEAD's commit, suffixed `-dirty` when tracked files changed; `unknown` outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{'a': {'b': 1}} -> {'a.b': '1'}; lists become JSON; MLflow caps values at 6000 chars."""
    flat: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
            flat[name] = text[:6000]
    return flat


def data_hashes(paths: dict[str, Path]) -> dict[str, str]:
    return {name: sha256_tree(path) for name, path in paths.items() if Path(path).exists()}


@contextmanager
def stage_run(stage: str, params: Params, sections: list[str],
              data: dict[str, Path] | None = None) -> Iterator[Any]:
    """Open an MLflow run for a stage; yields the `mlflow` module for logging inside it.

    The store is local (SQLite + an artifact folder) unless MLFLOW_TRACKING_URI is set,
    so a laptop needs no server and a team can point every stage at a shared one.
    """
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.tracking.tracking_uri
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(params.tracking.experiment)
    if experiment is None:
        artifacts = Path(params.tracking.artifact_location).resolve().as_uri()
        mlflow.create_experiment(params.tracking.experiment, artifact_location=artifacts)
    mlflow.set_experiment(params.tracking.experiment)
    dump = params.model_dump(mode="json")
    hashes = data_hashes(data or {})
    with mlflow.start_run(run_name=f"{stage}-{params.profile}") as run:
        mlflow.set_tags({"stage": stage, "profile": params.profile, "git_commit": git_commit(),
                         **{f"data.{k}.sha256": v for k, v in hashes.items()}})
        logged = {"seed": params.seed, "profile": params.profile}
        for section in sections:
            logged.update(flatten({section: dump[section]}))
        mlflow.log_params(logged)
        mlflow.log_dict(dump, "config/params.json")
        yield mlflow
        mlflow.log_dict({"run_id": run.info.run_id, "data_hashes": hashes}, "config/provenance.json")
