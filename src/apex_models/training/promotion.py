"""Promotion through the MLflow model registry: `champion` moves only on a real gain.

Every trained candidate becomes a model version. The alias `champion` moves to it only
when its held-out selection metric beats the current champion's by `margin`; otherwise
the version and its training run are tagged `rejected` with the reason. The first
champion is the un-tuned base model itself, so a fine-tune that does not beat its own
starting point never ships.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

CHAMPION = "champion"


@dataclass(frozen=True)
class Decision:
    model: str
    metric: str
    candidate_version: str
    candidate_value: float
    champion_version: str | None
    champion_value: float | None
    margin: float
    promoted: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _ensure_registered(client, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="apex-models candidates; alias `champion` ships")


def current_champion(client, name: str):
    """The model version behind alias `champion`, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def register_version(client, name: str, source: str, run_id: str | None, metric: str, value: float,
                     tags: dict[str, str] | None = None):
    """A new model version for artifacts at `source` (any artifact URI), tagged with its metric."""
    _ensure_registered(client, name)
    return client.create_model_version(name, source=source, run_id=run_id,
                                       tags={metric: f"{value:.6f}", **(tags or {})})


def decide(client, name: str, candidate, metric: str, margin: float) -> Decision:
    """Move `champion` to `candidate` if it beats the champion by `margin`; tag either way."""
    value = float(candidate.tags[metric])
    champion = current_champion(client, name)
    if champion is None:
        promoted, reason = True, "no champion yet"
        champ_version, champ_value = None, None
    elif candidate.run_id and champion.run_id == candidate.run_id:
        # The champion's own weights evaluated again (an evaluation stage re-ran after a
        # change to its code): comparing a model with its older score could only drop it
        # from the bundle, so it stays champion and the alias moves to the newest evaluation.
        champ_version = champion.version
        champ_value = float(champion.tags[metric]) if metric in champion.tags else None
        promoted = True
        reason = (f"the same training run as champion v{champ_version}, evaluated again "
                  f"({metric} {value:.4f}): it stays champion")
    elif metric not in champion.tags:
        champ_version, champ_value, promoted = champion.version, None, False
        reason = (f"champion v{champion.version} has no {metric}: it was selected on another benchmark; "
                  "compare on one benchmark (or move the alias by hand) before promoting")
    else:
        champ_version, champ_value = champion.version, float(champion.tags[metric])
        promoted = value > champ_value + margin
        verb = "beats" if promoted else "does not beat"
        reason = (f"{metric} {value:.4f} {verb} champion v{champ_version}'s {champ_value:.4f} "
                  f"by the margin {margin}")
    decision = Decision(name, metric, str(candidate.version), value,
                        None if champ_version is None else str(champ_version), champ_value, margin, promoted, reason)
    _record(client, name, candidate, decision)
    return decision


def reject(client, name: str, candidate, metric: str, margin: float, reason: str) -> Decision:
    """Reject `candidate` without comparing it to the champion (it failed a gate before that,
    e.g. it does not beat its own baseline); tagged like any decision, so the run says why."""
    champion = current_champion(client, name)
    decision = Decision(name, metric, str(candidate.version), float(candidate.tags[metric]),
                        None if champion is None else str(champion.version),
                        float(champion.tags[metric]) if champion is not None and metric in champion.tags else None,
                        margin, False, reason)
    _record(client, name, candidate, decision)
    return decision


def _record(client, name: str, candidate, decision: Decision) -> None:
    verdict = "promoted" if decision.promoted else "rejected"
    client.set_model_version_tag(name, candidate.version, "decision", verdict)
    client.set_model_version_tag(name, candidate.version, "decision_reason", decision.reason)
    if candidate.run_id:
        client.set_tag(candidate.run_id, "promotion", verdict)
        client.set_tag(candidate.run_id, "promotion_reason", decision.reason)
    if decision.promoted:
        client.set_registered_model_alias(name, CHAMPION, candidate.version)


def promote_over_baseline(client, name: str, source: str, run_id: str | None, metric: str, value: float,
                          baseline: str, baseline_value: float, margin: float,
                          tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Register a candidate whose only rival may be a non-model baseline (TF-IDF, the
    embedder's own order); it can become `champion` only if it beats that baseline by
    `margin`, and then only if it also beats the current champion (`decide`).

    Returns {"decision", "champion"} for the results file; `champion` is None while no
    version has ever passed, which tells the export job to leave the model out.
    """
    candidate = register_version(client, name, source, run_id, metric, value,
                                 tags={"baseline": baseline, f"baseline_{metric}": f"{baseline_value:.6f}",
                                       **(tags or {})})
    if not value > baseline_value + margin:
        reason = (f"{metric} {value:.4f} does not beat the baseline {baseline} ({baseline_value:.4f}) "
                  f"by the margin {margin}")
        decision = reject(client, name, candidate, metric, margin, reason)
    else:
        decision = decide(client, name, candidate, metric, margin)
    champion = current_champion(client, name)
    return {"decision": decision.to_json(), "baseline": {"name": baseline, metric: baseline_value},
            "champion": None if champion is None else {
                "version": str(champion.version), "run_id": champion.run_id,
                "source": f"models:/{name}/{champion.version}", metric: float(champion.tags[metric])}}
