"""plan(goal): ordered steps for a goal, with the memories that bear on it.

With no planner, the runtime plans by retrieval: the closest memory of kind `procedure`
(a title line, then one step per line, numbered or bulleted) gives the steps, provided
its cosine to the goal reaches `min_similarity`; otherwise no steps are invented and
`Plan.source` is empty. The other relevant memories come back as context either way.
The trained planner ships in the bundle only when it beats that kind of lookup on
held-out goals (eval/results/planner.json, promotion-planner.json).

A planner object (anything with `plan(goal, context, similar) -> list[str]`, such as the
bundled planner) replaces the lookup: it receives the relevant memories' texts as its
context and the closest procedure (its title line and steps, when one reaches
`min_similarity`) as `similar`, the known plan it adapts to this goal, as the planner
was trained to (data/planner_dataset.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from apex_models.runtime.store import Hit, MemoryStore

PROCEDURE_KIND = "procedure"
_STEP = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+(\S.*?)\s*$")


class Planner(Protocol):
    def plan(self, goal: str, context: list[str], similar: tuple[str, list[str]] | None = None) -> list[str]: ...


@dataclass(frozen=True)
class Plan:
    goal: str
    steps: list[str]
    source: str = ""                    # "planner", "procedure <memory id>", or "" (nothing close enough)
    similarity: float | None = None     # the procedure's cosine to the goal, when one was used
    context: list["Hit"] = field(default_factory=list)


def steps_of(text: str) -> list[str]:
    """The steps of a procedure memory: its numbered or bulleted lines in order; when it has
    none, every non-empty line after the first (the title)."""
    lines = [line for line in text.splitlines() if line.strip()]
    marked = [m.group(1) for line in lines if (m := _STEP.match(line))]
    return marked or [line.strip() for line in lines[1:]]


def plan(store: "MemoryStore", goal: str, planner: Planner | None = None, k: int = 5,
         min_similarity: float = 0.4) -> Plan:
    """Steps for `goal` (see the module doc) and up to `k` relevant memories as context."""
    if not goal.strip():
        raise ValueError("the goal is empty")
    query_vector = store.embedder.encode_queries([goal])[0]
    kinds = store.stats()["kinds"]
    others = [kind for kind in kinds if kind != PROCEDURE_KIND]
    context = store.search(goal, k=k, kind=others, query_vector=query_vector, intent=False) if others else []
    best = store.search(goal, k=1, kind=PROCEDURE_KIND, mode="dense", query_vector=query_vector,
                        intent=False, collapse=False) if kinds.get(PROCEDURE_KIND) else []
    procedure = best[0] if best and (best[0].why.dense_score or 0.0) >= min_similarity else None
    if planner is not None:
        similar = None if procedure is None else (procedure.text.strip().splitlines()[0], steps_of(procedure.text))
        return Plan(goal=goal, steps=list(planner.plan(goal, [h.text for h in context], similar=similar)),
                    source="planner", similarity=None if procedure is None else procedure.why.dense_score,
                    context=context)
    if procedure is None:
        return Plan(goal=goal, steps=[], context=context)
    return Plan(goal=goal, steps=steps_of(procedure.text), source=f"procedure {procedure.id}",
                similarity=procedure.why.dense_score, context=context)
