"""Weak supervision for the intent classifier: LF votes, decontamination, the taxonomy, the dataset."""

from __future__ import annotations

import json

import pytest

from apex_models.config import compose, validate
from apex_models.data.intent_weak import (TextDecontaminator, apply_lfs, build_intent_dataset, names_a_library,
                                          stdlib_error_messages)
from apex_models.data.decontam import normalize_text
from apex_models.data.task_data import read_split

# (text, source) -> (label, deciding LF): the golden votes of the labelling functions.
GOLDEN_VOTES = [
    (("pip install fails with permission denied", "stackexchange"), ("config_setup", "setup_failure")),
    (("TypeError when calling my function twice", "stackexchange"), ("debug_error", "error")),
    (("How to set up a relay node on Ubuntu", "stackexchange"), ("config_setup", "setup")),
    (("What is a UTxO?", "stackexchange"), ("explain_concept", "concept")),
    (("What will the price of ADA be next year?", "stackexchange"), ("out_of_scope", "offtopic")),
    (("Best way to structure a multi-service dapp", "stackexchange"), ("plan_task", "design")),
    (("How to query the tip with cardano-cli", "stackexchange"), ("api_usage", "named_howto")),
    (("Who made the logo of this site?", "stackexchange"), ("out_of_scope", "no_dev_rule")),
    (("Pandas DataFrame groupby two columns and count", "conala"), ("api_usage", "conala_r1")),
    (("reverse a list in place", "conala"), ("code_search", "conala_r1")),
    (("convert json string to dict", "conala"), ("code_search", "conala_r1")),
    (("call subprocess.run and capture its output", "conala"), ("api_usage", "conala_r1")),
]


@pytest.mark.parametrize("given,expected", GOLDEN_VOTES)
def test_labelling_functions_give_golden_labels(given, expected) -> None:
    label, lf, votes = apply_lfs(*given)
    assert (label, lf) == expected
    assert votes >= 1


def test_conflicting_votes_in_the_winning_tier_abstain() -> None:
    # "error" and "setup" are both tier 1 only when the setup-failure rule does not fire;
    # a text with neither dev marker nor rule abstains outside Stack Exchange.
    assert apply_lfs("a quiet afternoon", "conala") == ("code_search", "conala_r1", 1)
    assert apply_lfs("a quiet afternoon", "unknown-source") == (None, "", 0)


def test_r1_generic_types_are_not_libraries() -> None:
    assert not names_a_library("read a csv file into a list of dicts")
    assert names_a_library("numpy array to list")
    assert names_a_library("what does os.environ return")


def test_exception_messages_are_real() -> None:
    messages = stdlib_error_messages()
    assert "ZeroDivisionError: division by zero" in messages
    assert any(m.startswith("KeyError:") for m in messages) and len(messages) > 30


def test_decontamination_drops_a_text_and_its_near_copy() -> None:
    gold = {"How do I merge two dictionaries in a single expression in Python?"}
    decon = TextDecontaminator(gold, ngram_threshold=0.7, word_threshold=0.8)
    assert decon.reason("how do i merge two dictionaries in a single expression in python") == "exact"
    assert decon.reason("How do I merge two dictionaries in a single expression in Python 3?") == "near-ngram"
    assert decon.reason("python: in a single expression, merge two dictionaries how do I") == "near-words"
    assert decon.reason("How do I sort a list of tuples by the second item?") is None


def test_decontamination_against_the_gold_set(shared_dir) -> None:
    gold = [json.loads(line) for line in (shared_dir / "benchmarks/intent/gold.jsonl").read_text().splitlines()]
    decon = TextDecontaminator({r["text"] for r in gold})
    text = next(r["text"] for r in gold if len(r["text"].split()) >= 8)
    assert decon.reason(text) == "exact"
    assert decon.reason(text + " thanks") in ("near-ngram", "near-words")


def test_taxonomy_in_conf_equals_labels_json(shared_dir) -> None:
    labels = json.loads((shared_dir / "benchmarks/intent/labels.json").read_text())["labels"]
    cfg = validate(compose("default")).intent
    assert cfg.label_names == [item["label"] for item in labels]
    assert [lab.definition for lab in cfg.labels] == [item["definition"] for item in labels]
    assert cfg.oos_label in cfg.label_names


def test_dataset_is_balanced_clean_and_traced(tmp_path, shared_dir) -> None:
    params = validate(compose("tiny"))
    report = build_intent_dataset(shared_dir, tmp_path, params.intent.weak, params.intent.label_names, params.seed)
    rows = read_split(tmp_path / "train")
    cap = params.intent.weak.cap_per_class
    assert set(report["per_label"]) == set(params.intent.label_names)
    assert all(params.intent.weak.min_per_class <= n <= cap for n in report["per_label"].values())
    assert all(r["source"] and r["lf"] for r in rows)
    gold = {normalize_text(json.loads(line)["text"])
            for line in (shared_dir / "benchmarks/intent/gold.jsonl").read_text().splitlines()}
    assert not gold & {normalize_text(r["text"]) for r in rows}
    assert (tmp_path / "README.md").read_text().startswith("# Intent classifier training data")
