"""plan(goal): steps from the closest procedure memory (or a given planner), relevant memories
as context, and no invented steps when nothing is close enough."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from apex_models.cli import app
from apex_models.runtime import PROCEDURE_KIND, MemoryStore, OnnxEmbedder, load_bundle
from apex_models.runtime.planning import steps_of

RELEASE = ("Releasing the package to PyPI\n"
           "1. Bump the version in pyproject.toml\n"
           "2. Build the sdist and wheel with python -m build\n"
           "3. Upload them with twine upload dist/*\n"
           "4. Tag the commit and push the tag")
ROTATE = ("Rotating the database password\n"
          "- Generate a new password in the vault\n"
          "- Update the secret in the deployment\n"
          "- Restart the API pods")


@pytest.fixture(scope="module")
def embedder(minilm_bundle: Path) -> OnnxEmbedder:
    return load_bundle(minilm_bundle).embedder()


def test_steps_of_reads_numbered_bulleted_and_plain_procedures() -> None:
    assert steps_of(RELEASE) == ["Bump the version in pyproject.toml", "Build the sdist and wheel with python -m build",
                                 "Upload them with twine upload dist/*", "Tag the commit and push the tag"]
    assert steps_of(ROTATE)[0] == "Generate a new password in the vault" and len(steps_of(ROTATE)) == 3
    assert steps_of("Title\n  first thing\n\n  second thing ") == ["first thing", "second thing"]
    assert steps_of("1) only one step") == ["only one step"]


def _fill(store: MemoryStore) -> dict[str, str]:
    return {
        "release": store.add(RELEASE, kind=PROCEDURE_KIND),
        "rotate": store.add(ROTATE, kind=PROCEDURE_KIND),
        "token": store.add("The PyPI upload token lives in the team vault under pypi/apex", kind="note"),
        "changelog": store.add("We decided every release needs a changelog entry before tagging", kind="decision"),
        "redis": store.add("The cache layer uses Redis with a five minute TTL", kind="note"),
    }


def test_plan_uses_the_closest_procedure_and_returns_context(tmp_path: Path, embedder: OnnxEmbedder) -> None:
    with MemoryStore.open(tmp_path / "s", embedder, key=bytes(32)) as store:
        ids = _fill(store)
        plan = store.plan("publish a new release of the package on PyPI", k=3)
        assert plan.source == f"procedure {ids['release']}" and plan.steps == steps_of(RELEASE)
        assert plan.similarity is not None and plan.similarity >= 0.4
        context = [h.id for h in plan.context]
        assert len(context) == 3 and ids["token"] in context and ids["changelog"] in context
        assert all(h.kind != PROCEDURE_KIND for h in plan.context)

        rotate = store.plan("change the postgres database password")
        assert rotate.source == f"procedure {ids['rotate']}" and len(rotate.steps) == 3

        nothing = store.plan("bake sourdough bread at home")  # no procedure is about this
        assert nothing.steps == [] and nothing.source == "" and nothing.similarity is None
        with pytest.raises(ValueError, match="goal is empty"):
            store.plan("  ")


def test_a_given_planner_gets_the_relevant_memories_and_the_closest_procedure(tmp_path: Path,
                                                                            embedder: OnnxEmbedder) -> None:
    class EchoPlanner:  # the Planner protocol: any object with plan(goal, context, similar) -> steps
        def __init__(self) -> None:
            self.seen: list[str] = []
            self.similar: tuple[str, list[str]] | None = None

        def plan(self, goal: str, context: list[str], similar: tuple[str, list[str]] | None = None) -> list[str]:
            self.seen, self.similar = context, similar
            return [f"read: {text[:20]}" for text in context]

    with MemoryStore.open(tmp_path / "s", embedder, key=bytes(32)) as store:
        ids = _fill(store)
        planner = EchoPlanner()
        plan = store.plan("publish a new release of the package on PyPI", planner=planner, k=2)
        assert plan.source == "planner" and len(plan.steps) == 2
        assert planner.seen == [h.text for h in plan.context] and ids["release"] not in [h.id for h in plan.context]
        # the known procedure to adapt: its title line and its steps, as the planner was trained
        assert planner.similar == ("Releasing the package to PyPI", steps_of(RELEASE))
        assert plan.similarity is not None and plan.similarity >= 0.4
        store.plan("bake sourdough bread at home", planner=planner)  # no procedure is close enough
        assert planner.similar is None


def test_memory_plan_cli(minilm_bundle: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"APEX_MEMORY_PASSPHRASE": "plan passphrase"}
    common = ["--store", str(tmp_path / "mem"), "--bundle", str(minilm_bundle)]
    added = runner.invoke(app, ["memory", "add", *common, RELEASE, "--kind", PROCEDURE_KIND], env=env)
    assert added.exit_code == 0, added.output
    result = runner.invoke(app, ["memory", "plan", *common, "how do I release to PyPI", "-k", "2"], env=env)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["steps"] == steps_of(RELEASE) and out["source"] == f"procedure {json.loads(added.stdout)['id']}"
    assert out["context"] == []  # the only memory is the procedure itself
    assert "procedure" in runner.invoke(app, ["memory", "plan", "--help"]).output
