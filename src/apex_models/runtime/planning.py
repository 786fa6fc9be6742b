"""plan(goal): ordered steps for a goal, with the memories that bear on it.

The planner model the pipeline trains does not yet beat retrieving the closest known
procedure (held-out ROUGE-L 0.128 against 0.215 for the BM25 lookup; eval/results/planner.json),
so it is not promoted into the bundle, and the runtime plans by retrieval too: the
closest memory of kind `procedure` (a title line, then one step per line, numbered or
bulleted) gives the steps, provided its cosine to the goal reaches `min_similarity`;
otherwise no steps are invented and `Plan.source` is empty. The other relevant memories
come back as context either way.

A planner object (anything with `plan(goal, context) -> list[str]`, such as a bundled
planner once one beats retrieval) replaces the lookup and receives the relevant
memories' texts as its context.
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
    def plan(self, goal: str, context: list[str]) -> list[str]: ...


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
    if planner is not None:
        return Plan(goal=goal, steps=list(planner.plan(goal, [h.text for h in context])), source="planner",
                    context=context)
    if not kinds.get(PROCEDURE_KIND):
        return Plan(goal=goal, steps=[], context=context)
    best = store.search(goal, k=1, kind=PROCEDURE_KIND, mode="dense", query_vector=query_vector,
                        intent=False, collapse=False)
    if not best or (best[0].why.dense_score or 0.0) < min_similarity:
        return Plan(goal=goal, steps=[], context=context)
    return Plan(goal=goal, steps=steps_of(best[0].text), source=f"procedure {best[0].id}",
                similarity=best[0].why.dense_score, context=context)
