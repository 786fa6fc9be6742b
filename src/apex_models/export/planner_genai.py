"""Export a decoder-only planner (`planner.arch: causal_lm`, the gpu profile) with onnxruntime-genai.

The encoder-decoder planner has hand-written graphs (export/planner.py) because no
exporter covers a BERT2BERT model under transformers 5. A decoder-only LM (Qwen2, Llama,
Phi, Mistral, ...) is what onnxruntime-genai's model builder is for: it writes one graph
whose attention keeps its own KV cache (GroupQueryAttention), its weights beside it, and a
genai_config.json, from the merged Hugging Face folder and with no network. The builder
runs in a subprocess (`python -m onnxruntime_genai.models.builder`), its command-line
contract, once per precision: fp32, and int8 (its weight-only int8 MatMuls on CPU).

The export is then proven as export/planner.py proves its graphs, on the same probe goals:
greedy decoding through onnxruntime-genai must give `generate`'s tokens exactly (fp32), and
teacher-forced, the int8 model must pick torch's next token or a tie (`head_gates.
causal_generation`). A failed fp32 gate fails the export; a failed int8 gate drops int8.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

GENAI_DIRS = {"fp32": "genai-fp32", "int8": "genai-int8"}
GRAPH = "model.onnx"
GENAI_FILES = ("model.onnx.data", "genai_config.json")   # what the graph needs beside it


def build_genai(model_dir: Path, out_dir: Path, precision: str, eos_token_ids: list[int]) -> None:
    """Run the model builder for one precision into `out_dir`, keeping only the graph, its
    weights and genai_config.json (the bundle ships its own tokenizer.json).

    The builder adds the tokenizer's end token to the stop tokens when the model config
    names another; the config is set back to `eos_token_ids`, where torch's `generate`
    stops, so both decode the same sequence.
    """
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    cache = out_dir.with_name(out_dir.name + ".cache")
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-m", "planner", "-i", str(model_dir),
               "-o", str(out_dir), "-p", precision, "-e", "cpu", "-c", str(cache)]
    try:
        done = subprocess.run(command, capture_output=True, text=True)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0 or not (out_dir / GRAPH).is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise RuntimeError(f"onnxruntime-genai's model builder failed for {model_dir} ({precision}):\n{tail}")
    for path in out_dir.iterdir():
        if path.name not in (GRAPH, *GENAI_FILES):
            path.unlink()
    config_path = out_dir / "genai_config.json"
    config = json.loads(config_path.read_text())
    config["model"]["eos_token_id"] = eos_token_ids if len(eos_token_ids) > 1 else eos_token_ids[0]
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def eos_ids(model) -> list[int]:
    """Where torch's greedy `generate` stops for this model (generation config, else model config)."""
    eos = model.generation_config.eos_token_id
    eos = model.config.eos_token_id if eos is None else eos
    if eos is None:
        raise ValueError("the planner has no eos_token_id in its generation or model config")
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def prompt_ids(tokenizer, source: str, max_source_length: int) -> list[int]:
    """The prompt as training tokenised it (training/planner.encode_batch)."""
    from apex_models.training.planner import PROMPT_SUFFIX

    return tokenizer(source + PROMPT_SUFFIX, max_length=max_source_length, truncation=True,
                     add_special_tokens=False)["input_ids"]


@torch.no_grad()
def torch_causal_greedy(model, prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
    """The reference: `generate` (greedy, one prompt at a time) -> the new token ids, up to and
    including the end token."""
    out = []
    for prompt in prompts:
        ids = torch.tensor([prompt])
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                   do_sample=False, num_beams=1)
        out.append(generated[0, len(prompt):].tolist())
    return out


def genai_forced_choices(planner, prompts: list[list[int]], reference: list[list[int]]) -> list[list[int]]:
    """Teacher-forced decoding in onnxruntime-genai: fed torch's own tokens, the model's argmax
    at each position (see export/planner.forced_choices for why this measures int8)."""
    out = []
    for prompt, ref in zip(prompts, reference):
        generator, picks = planner.start(prompt, len(ref)), []
        for token in ref:
            logits = np.asarray(generator.get_logits())
            picks.append(int(logits.reshape(-1, logits.shape[-1])[-1].argmax()))
            generator.append_tokens([token])
        out.append(picks)
    return out


@torch.no_grad()
def causal_forced_agreement(model, prompts: list[list[int]], reference: list[list[int]],
                            choices: list[list[int]]) -> dict[str, Any]:
    """How often the teacher-forced pick is torch's next token, strictly and within ties
    (export/planner.score_forced_picks), torch's logits from one forward over prompt + tokens."""
    from apex_models.export.planner import score_forced_picks

    logits = (model(torch.tensor([prompt + ref[:-1]])).logits[0, len(prompt) - 1:]
              for prompt, ref in zip(prompts, reference))
    return score_forced_picks(logits, reference, choices)


def export_causal_planner_artifacts(model_dir: Path, out_dir: Path, cfg, *, base_model: str, max_source_length: int,
                                    max_new_tokens: int, gates: dict[str, dict[str, float]], n_probe: int = 64):
    """A trained decoder-only planner (merged weights) -> onnxruntime-genai folders in fp32 and
    int8, tokenizer.json and HF safetensors in `out_dir`, gated against torch's `generate`.

    `parity.json` is written before a gate can raise. Returns the CausalPlannerSpec.
    """
    from apex_models.export.bundle import HF, TOKENIZER
    from apex_models.export.onnx import save_tokenizer_json
    from apex_models.export.parity import ParityError, check_floor, probe_queries
    from apex_models.export.planner import token_parity
    from apex_models.runtime.bundle import CausalPlannerSpec
    from apex_models.runtime.models import GenaiPlanner
    from apex_models.training.planner import PROMPT_SUFFIX, load_planner

    if cfg.arch != "causal_lm":
        raise ValueError(f"export_causal_planner_artifacts exports a causal_lm planner, not {cfg.arch!r}")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_planner(model_dir, cfg)
    stop = eos_ids(model)
    for precision, folder in GENAI_DIRS.items():
        build_genai(model_dir, out_dir / folder, precision, stop)
    save_tokenizer_json(model_dir, out_dir / TOKENIZER, max_length=max_source_length)
    model.save_pretrained(out_dir / HF)
    tokenizer.save_pretrained(out_dir / HF)
    spec = CausalPlannerSpec(
        base_model=base_model, tokenizer=TOKENIZER, onnx={p: f"{d}/{GRAPH}" for p, d in GENAI_DIRS.items()},
        genai_files={p: [f"{d}/{f}" for f in GENAI_FILES] for p, d in GENAI_DIRS.items()},
        default_precision="int8", safetensors_dir=HF, max_source_length=max_source_length,
        max_new_tokens=max_new_tokens, prompt_suffix=PROMPT_SUFFIX, eos_token_ids=stop,
        reads_similar=cfg.data.retrieve)
    prompts = [prompt_ids(tokenizer, goal, max_source_length) for goal in probe_queries(n_probe)]
    reference = torch_causal_greedy(model, prompts, max_new_tokens)
    parity: dict[str, Any] = {"gates": gates, "exporter": "onnxruntime-genai model builder"}
    for precision in GENAI_DIRS:
        planner = GenaiPlanner(out_dir, spec, precision)
        free = [planner.decode(prompt, max_new_tokens) for prompt in prompts]
        choices = genai_forced_choices(planner, prompts, reference)
        parity[precision] = {**token_parity(reference, free),
                             **causal_forced_agreement(model, prompts, reference, choices)}
    (out_dir / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    check_floor("planner fp32", parity["fp32"], gates["fp32"])
    try:
        check_floor("planner int8", parity["int8"], gates["int8"])
    except ParityError as exc:
        shutil.rmtree(out_dir / GENAI_DIRS["int8"])
        parity["int8_dropped"] = str(exc)
        (out_dir / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
        return spec.model_copy(update={
            "parity": parity, "onnx": {"fp32": spec.onnx["fp32"]}, "genai_files": {"fp32": spec.genai_files["fp32"]},
            "default_precision": "fp32", "default_reason": f"int8 failed its parity gate and is not shipped ({exc})"})
    return spec.model_copy(update={"parity": parity,
                                   "default_reason": "int8 passed the parity gates; weights about 4x smaller"})

