"""Export the encoder-decoder planner to two ONNX graphs that decode with a KV cache.

Why not a library exporter: optimum-onnx (which writes encoder / decoder-with-past graphs
for Hugging Face seq2seq models) pins transformers < 4.58, and this project runs
transformers 5 (export/README.md); onnxruntime-genai's model builder covers decoder-only
families (Llama, Phi, Qwen...), not a BERT2BERT EncoderDecoderModel. So the two graphs
are small torch modules written here over the trained model's own layers, and the export
proves them: greedy decoding in ONNX Runtime must give torch's `generate` tokens on every
probe goal, or the export fails.

The graphs (L decoder layers, H heads of size D, S source tokens, T tokens decoded so far):

- `encoder`: (input_ids [B, S], attention_mask [B, S]) -> cross_kv [L, 2, B, H, S, D]: the
  encoder, then each decoder layer's cross-attention key and value projections of its
  output. They depend on the goal only, so they are computed once per plan, not per token.
- `decoder`: one token per call, (input_ids [B, 1], position_ids [B, 1],
  encoder_attention_mask [B, S], cross_kv, past [L, 2, B, H, T, D]) -> (logits [B, V],
  present [L, 2, B, H, T + 1, D]). The first call passes T = 0 (an empty past).

Each generated token therefore costs one decoder-layer pass over one position, where
decoding without a cache re-runs the whole prefix (and the encoder) every step.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
import torch

ENCODER_INPUTS = ["input_ids", "attention_mask"]
DECODER_INPUTS = ["input_ids", "position_ids", "encoder_attention_mask", "cross_kv", "past"]


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, N, H*D] -> [B, H, N, D]."""
    b, n, width = x.shape
    return x.view(b, n, heads, width // heads).transpose(1, 2)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Scaled dot-product attention, [B, H, N, D] each -> [B, N, H*D]; `scale` is 1/sqrt(D)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    context = torch.matmul(torch.softmax(scores, dim=-1), v)
    b, h, n, d = context.shape
    return context.transpose(1, 2).reshape(b, n, h * d)


class PlannerEncoder(torch.nn.Module):
    """(input_ids, attention_mask) -> cross_kv [L, 2, B, H, S, D] (see the module doc)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.project = getattr(model, "enc_to_dec_proj", None)   # only when the widths differ
        self.layers = model.decoder.bert.encoder.layer
        self.heads = model.decoder.config.num_attention_heads

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
        if self.project is not None:
            hidden = self.project(hidden)
        cross = [layer.crossattention.self for layer in self.layers]
        return torch.stack([torch.stack([_split_heads(a.key(hidden), self.heads),
                                         _split_heads(a.value(hidden), self.heads)]) for a in cross])


class PlannerDecoderStep(torch.nn.Module):
    """One greedy step of the BERT decoder with cached keys and values (see the module doc).

    The same computation as the Hugging Face BertLMHeadModel for the last position: the
    new token attends to every earlier one (causal attention, with nothing after it to
    hide), then to the encoder's unmasked tokens, then the feed-forward block and the LM
    head. Layers are called through their own Linear and LayerNorm modules, so trained
    weights are used as they are.
    """

    def __init__(self, model) -> None:
        super().__init__()
        decoder = model.decoder
        self.embeddings = decoder.bert.embeddings
        self.layers = decoder.bert.encoder.layer
        self.head = decoder.cls
        self.heads = decoder.config.num_attention_heads
        self.scale = 1.0 / math.sqrt(decoder.config.hidden_size // self.heads)

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, encoder_attention_mask: torch.Tensor,
                cross_kv: torch.Tensor, past: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.embeddings
        x = e.LayerNorm(e.word_embeddings(input_ids) + e.position_embeddings(position_ids)
                        + e.token_type_embeddings(torch.zeros_like(input_ids)))
        bias = (1.0 - encoder_attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        present = []
        for i, layer in enumerate(self.layers):
            own = layer.attention.self
            k = torch.cat([past[i, 0], _split_heads(own.key(x), self.heads)], dim=2)
            v = torch.cat([past[i, 1], _split_heads(own.value(x), self.heads)], dim=2)
            present.append(torch.stack([k, v]))
            x = layer.attention.output(_attend(_split_heads(own.query(x), self.heads), k, v, None, self.scale), x)
            cross = layer.crossattention
            x = cross.output(_attend(_split_heads(cross.self.query(x), self.heads), cross_kv[i, 0], cross_kv[i, 1],
                                     bias, self.scale), x)
            x = layer.output(layer.intermediate(x), x)
        # The head on a 2-D [B, hidden] row exports as Gemm over the tied embedding matrix
        # itself; on [B, 1, hidden] it becomes MatMul with a folded transposed copy (+47 MB).
        return self.head(x[:, -1]), torch.stack(present)


def cache_shape(model) -> dict[str, int]:
    """Layers, heads and head size of the decoder: what the runtime sizes the empty past with."""
    cfg = model.decoder.config
    return {"layers": cfg.num_hidden_layers, "heads": cfg.num_attention_heads,
            "head_dim": cfg.hidden_size // cfg.num_attention_heads}


def export_planner_onnx(model, tokenizer, encoder_path: Path, decoder_path: Path, opset: int = 17) -> dict[str, int]:
    """Write the two fp32 graphs of an EncoderDecoderModel with a BERT decoder (TorchScript
    exporter, one self-contained file each; batch, source and cache lengths dynamic) and
    check them with onnx.checker; returns cache_shape."""
    if model.config.decoder.model_type != "bert":
        raise ValueError(f"the planner export handles a BERT decoder, not {model.config.decoder.model_type!r} "
                         "(a causal_lm planner exports through onnxruntime-genai: export.heads.planner: "
                         "causal_generation, as in the gpu profile)")
    model.eval()
    shape = cache_shape(model)
    sample = tokenizer(["a goal to plan", "another, longer goal to plan for"], padding=True, return_tensors="pt")
    ids, mask = sample["input_ids"].to(torch.int64), sample["attention_mask"].to(torch.int64)
    encoder, step = PlannerEncoder(model).eval(), PlannerDecoderStep(model).eval()
    for path in (encoder_path, decoder_path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        cross = encoder(ids, mask)
        torch.onnx.export(encoder, (ids, mask), str(encoder_path), dynamo=False, input_names=ENCODER_INPUTS,
                          output_names=["cross_kv"], opset_version=opset, do_constant_folding=True,
                          dynamic_axes={"input_ids": {0: "batch", 1: "source"},
                                        "attention_mask": {0: "batch", 1: "source"},
                                        "cross_kv": {2: "batch", 4: "source"}})
        # Traced with a past of 3 tokens so every cache length stays symbolic (0 included).
        past = torch.zeros(shape["layers"], 2, ids.shape[0], shape["heads"], 3, shape["head_dim"])
        args = (torch.full((ids.shape[0], 1), 7, dtype=torch.int64), torch.full((ids.shape[0], 1), 3, dtype=torch.int64),
                mask, cross, past)
        torch.onnx.export(step, args, str(decoder_path), dynamo=False, input_names=DECODER_INPUTS,
                          output_names=["logits", "present"], opset_version=opset, do_constant_folding=True,
                          dynamic_axes={"input_ids": {0: "batch"}, "position_ids": {0: "batch"},
                                        "encoder_attention_mask": {0: "batch", 1: "source"},
                                        "cross_kv": {2: "batch", 4: "source"}, "past": {2: "batch", 4: "past"},
                                        "logits": {0: "batch"}, "present": {2: "batch", 4: "total"}})
    for path in (encoder_path, decoder_path):
        onnx.checker.check_model(str(path))
    return shape


@torch.no_grad()
def torch_greedy(model, tokenizer, goals: list[str], max_source_length: int, max_new_tokens: int) -> list[list[int]]:
    """The reference: `generate` (greedy, one goal at a time) -> generated ids, without the
    start token, up to and including the end token."""
    out = []
    for goal in goals:
        enc = tokenizer([goal], max_length=max_source_length, truncation=True, return_tensors="pt")
        ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)[0].tolist()
        out.append(ids[1:])
    return out


def token_parity(reference: list[list[int]], produced: list[list[int]]) -> dict[str, Any]:
    """How far ONNX greedy decoding follows torch's.

    `sequence_match`: the share of probes whose whole token sequence is identical (the fp32
    gate). `prefix_agreement`: the mean share of torch's tokens produced before the first
    difference (one early flip in greedy decoding changes everything after it, so this is
    the int8 measure). `first_divergence`: the earliest differing position, if any.
    """
    if len(reference) != len(produced) or not reference:
        raise ValueError("token_parity needs one produced sequence per reference sequence")
    same, prefixes, first = 0, [], None
    for ref, got in zip(reference, produced):
        n = 0
        while n < min(len(ref), len(got)) and ref[n] == got[n]:
            n += 1
        identical = ref == got
        same += identical
        prefixes.append(1.0 if identical else n / max(len(ref), 1))
        if not identical:
            first = n if first is None else min(first, n)
    return {"sequence_match": same / len(reference), "prefix_agreement": float(np.mean(prefixes)),
            "first_divergence": first, "n": len(reference),
            "mean_tokens": float(np.mean([len(r) for r in reference]))}


def forced_choices(planner, goals: list[str], reference: list[list[int]]) -> list[list[int]]:
    """Teacher-forced decoding in ONNX: fed torch's own tokens, the graphs' argmax at each
    position. Unlike free decoding, one close call does not derail the rest of the
    sequence, so comparing these with torch measures the graphs, not the cascade."""
    out = []
    for goal, ref in zip(goals, reference):
        mask, cross, past = planner.start([goal])
        picks = []
        for position, token in enumerate([planner.spec.decoder_start_token_id] + ref[:-1]):
            logits, past = planner.step(np.array([[token]], dtype=np.int64), position, mask, cross, past)
            picks.append(int(logits[0].argmax()))
        out.append(picks)
    return out


@torch.no_grad()
def forced_agreement(model, tokenizer, goals: list[str], reference: list[list[int]], choices: list[list[int]],
                     max_source_length: int, tie_margin: float | None = None) -> dict[str, Any]:
    """How often the teacher-forced ONNX pick (forced_choices) is torch's next token (see
    score_forced_picks), torch's logits coming from one forward over its own tokens."""
    def rows():
        for goal, ref in zip(goals, reference):
            enc = tokenizer([goal], max_length=max_source_length, truncation=True, return_tensors="pt")
            fed = torch.tensor([[model.config.decoder_start_token_id] + ref[:-1]])
            yield model(**enc, decoder_input_ids=fed).logits[0]

    return score_forced_picks(rows(), reference, choices, tie_margin)


def score_forced_picks(logits: Iterable[torch.Tensor], reference: list[list[int]], choices: list[list[int]],
                       tie_margin: float | None = None) -> dict[str, Any]:
    """`forced_token_agreement`: the share of teacher-forced picks equal to torch's token;
    `forced_agreement_within_ties`: also counting a pick whose torch logit is within
    `tie_margin` of torch's best (a step torch does not decide either; the classifiers'
    int8 measure, parity.TIE_MARGIN). `logits` holds torch's [positions, vocab] per probe."""
    from apex_models.export.parity import TIE_MARGIN

    margin = TIE_MARGIN if tie_margin is None else tie_margin
    exact = close = total = 0
    for scores, ref, picks in zip(logits, reference, choices):
        chosen = scores[torch.arange(len(picks)), torch.tensor(picks, dtype=torch.long)]
        exact += sum(int(p == r) for p, r in zip(picks, ref))
        close += int((scores.max(dim=-1).values - chosen <= margin).sum())
        total += len(picks)
    return {"forced_token_agreement": exact / max(total, 1), "forced_agreement_within_ties": close / max(total, 1),
            "tokens": total, "tie_margin": margin}


ENCODER = {"fp32": "encoder.fp32.onnx", "int8": "encoder.int8.onnx"}
DECODER = {"fp32": "decoder.fp32.onnx", "int8": "decoder.int8.onnx"}


def export_planner_artifacts(model_dir: Path, out_dir: Path, cfg, *, base_model: str, max_source_length: int,
                             max_new_tokens: int, gates: dict[str, dict[str, float]], opset: int = 17,
                             per_channel: bool = True, reduce_range: bool = False, n_probe: int = 64):
    """A trained encoder-decoder planner -> both graphs in fp32 and int8, tokenizer.json and HF
    safetensors in `out_dir`, greedy decoding gated against torch's `generate`.

    `cfg` is the PlannerConfig it was trained with (its arch picks the loader);
    `max_source_length` and `max_new_tokens` go into the spec. The probe goals are
    `parity.probe_queries(n_probe)`. A failed fp32 gate fails the export (ParityError: the
    graphs are wrong); a failed int8 gate drops the int8 files, and the spec ships fp32 as
    the default saying why. `parity.json` is written before a gate can raise. ORT's
    offline transformer fusions are not tried: they pattern-match Hugging Face's attention,
    not these hand-built steps (the session's own optimisations still run).
    """
    from apex_models.export.bundle import HF, TOKENIZER
    from apex_models.export.onnx import quantize_int8, save_tokenizer_json
    from apex_models.export.parity import ParityError, check_floor, probe_queries
    from apex_models.runtime.bundle import PlannerSpec
    from apex_models.runtime.models import OnnxPlanner
    from apex_models.training.planner import load_planner

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, tokenizer = load_planner(model_dir, cfg)
    shape = export_planner_onnx(model, tokenizer, out_dir / ENCODER["fp32"], out_dir / DECODER["fp32"], opset)
    for graph in (ENCODER, DECODER):
        quantize_int8(out_dir / graph["fp32"], out_dir / graph["int8"], per_channel=per_channel,
                      reduce_range=reduce_range)
    save_tokenizer_json(model_dir, out_dir / TOKENIZER, max_length=max_source_length)
    model.save_pretrained(out_dir / HF)
    tokenizer.save_pretrained(out_dir / HF)
    spec = PlannerSpec(base_model=base_model, tokenizer=TOKENIZER, onnx=dict(ENCODER), decoder_onnx=dict(DECODER),
                       default_precision="int8", safetensors_dir=HF, max_source_length=max_source_length,
                       max_new_tokens=max_new_tokens, decoder_start_token_id=model.config.decoder_start_token_id,
                       eos_token_id=model.config.eos_token_id, reads_similar=cfg.data.retrieve, **shape)
    goals = probe_queries(n_probe)
    reference = torch_greedy(model, tokenizer, goals, max_source_length, max_new_tokens)
    # ORT's offline fusions are not tried (see above): the card says so through this key.
    parity: dict[str, Any] = {"gates": gates, "graph_optimization": "none"}
    for precision in ("fp32", "int8"):
        planner = OnnxPlanner(out_dir, spec, precision)
        choices = forced_choices(planner, goals, reference)
        parity[precision] = {**token_parity(reference, [planner.generate_ids([g])[0] for g in goals]),
                             **forced_agreement(model, tokenizer, goals, reference, choices, max_source_length)}
    (out_dir / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
    check_floor("planner fp32", parity["fp32"], gates["fp32"])
    try:
        check_floor("planner int8", parity["int8"], gates["int8"])
    except ParityError as exc:
        for graph in (ENCODER, DECODER):
            (out_dir / graph["int8"]).unlink()
        parity["int8_dropped"] = str(exc)
        (out_dir / "parity.json").write_text(json.dumps(parity, indent=2) + "\n")
        return spec.model_copy(update={
            "parity": parity, "onnx": {"fp32": ENCODER["fp32"]}, "decoder_onnx": {"fp32": DECODER["fp32"]},
            "default_precision": "fp32", "default_reason": f"int8 failed its parity gate and is not shipped ({exc})"})
    return spec.model_copy(update={"parity": parity,
                                   "default_reason": "int8 passed the parity gates; about 4x smaller and faster"})
