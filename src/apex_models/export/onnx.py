"""Export a merged HF encoder to one ONNX file that computes the sentence embedding itself.

Pooling and L2 normalisation live inside the graph (through `embed_batch`, the same
function the torch encoder uses) so the runtime only tokenises and runs the graph:
torch and ONNX vectors stay comparable one to one, which is what the parity gate checks.
"""

from __future__ import annotations

import inspect
import json
import shutil
import tempfile
from pathlib import Path

import onnx
import torch
from transformers import AutoModel, AutoTokenizer

from apex_models.models.embedder import embed_batch


class _ZeroTokenTypes(torch.nn.Module):
    """Feeds zero token_type_ids to models that take them, so they are not a graph input.

    Single-segment embedding never uses a second segment; making the zeros explicit also
    keeps the traced graph from depending on a buffer sliced to a traced length.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.takes_token_types = "token_type_ids" in inspect.signature(model.forward).parameters

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        if self.takes_token_types:
            return self.model(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=torch.zeros_like(input_ids))
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


class SentenceEmbeddingModule(torch.nn.Module):
    """forward(input_ids, attention_mask) -> pooled (and optionally unit) sentence vectors."""

    def __init__(self, model: torch.nn.Module, pooling: str = "mean", normalize: bool = True) -> None:
        super().__init__()
        self.encoder = _ZeroTokenTypes(model)
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return embed_batch(self.encoder, input_ids, attention_mask, self.pooling, self.normalize)


def export_embedder_onnx(model_dir: Path, out_path: Path, pooling: str = "mean",
                         normalize: bool = True, opset: int = 17) -> Path:
    """Write `out_path` (one self-contained file) and check it with `onnx.checker`.

    Uses the TorchScript exporter (`dynamo=False`): it writes a single file with the
    weights inside, which is what a bundle hashes and ships; batch and sequence are dynamic.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    model = AutoModel.from_pretrained(model_dir)
    model.eval()
    module = SentenceEmbeddingModule(model, pooling=pooling, normalize=normalize).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    sample = tokenizer(["an example query", "a second, somewhat longer example text"],
                       padding=True, return_tensors="pt")
    input_ids = sample["input_ids"].to(torch.int64)
    attention_mask = sample["attention_mask"].to(torch.int64)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(
            module,
            (input_ids, attention_mask),
            str(out_path),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "sequence"},
                "attention_mask": {0: "batch", 1: "sequence"},
                "sentence_embedding": {0: "batch"},
            },
            opset_version=opset,
            do_constant_folding=True,
        )
    onnx.checker.check_model(str(out_path))
    return out_path


def save_tokenizer_json(model_dir: Path, out_path: Path, max_length: int) -> Path:
    """Write the fast tokenizer's `tokenizer.json` with no padding and no truncation baked in.

    The runtime pads to the longest text of each batch and truncates at the query or
    document length it is asked for; a fixed padding left in the file would silently
    pad every text to `max_length` (slow) and a fixed truncation would override it.
    `max_length` is only checked against the model's own limit.
    """
    model_dir, out_path = Path(model_dir), Path(out_path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 1_000_000 and max_length > limit:
        raise ValueError(f"max_length {max_length} exceeds the model's limit of {limit} tokens")
    backend = tokenizer.backend_tokenizer
    backend.no_padding()
    backend.no_truncation()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    backend.save(str(out_path))
    saved = json.loads(out_path.read_text(encoding="utf-8"))
    if saved.get("padding") is not None or saved.get("truncation") is not None:
        raise RuntimeError(f"{out_path.name} still carries padding or truncation settings")
    return out_path


def quantize_int8(fp32_path: Path, int8_path: Path, per_channel: bool = True,
                  reduce_range: bool = False, preprocess: bool = False) -> Path:
    """Dynamic int8 quantisation of the weights (QInt8), activations quantised at run time.

    per_channel is the default because per-tensor scales lose too much on this encoder
    (measured min cosine 0.90 vs 0.99). `preprocess` runs ORT's quant_pre_process
    (shape inference + graph optimisation) first; it is off by default because on
    all-MiniLM-L6-v2 it gave identical parity (64 probe texts: min 0.9891, mean 0.9936
    either way), so it adds a step for no gain.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32_path, int8_path = Path(fp32_path), Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = fp32_path
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            source = Path(tmp) / "preprocessed.onnx"
            # Symbolic shape inference fails on this traced graph ("Incomplete symbolic shape
            # inference") and then dumps a debug model into the working folder; ONNX shape
            # inference plus ORT's graph optimisation is what is left to gain, so skip it.
            quant_pre_process(str(fp32_path), str(source), skip_symbolic_shape=True)
        out_tmp = Path(tmp) / "int8.onnx"
        # DefaultTensorType: fused graphs (optimize_bert_graph) carry contrib ops whose output
        # types ONNX shape inference cannot infer; they are float, as in every graph here.
        quantize_dynamic(str(source), str(out_tmp), per_channel=per_channel,
                         reduce_range=reduce_range, weight_type=QuantType.QInt8,
                         extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        shutil.move(str(out_tmp), int8_path)
    onnx.checker.check_model(str(int8_path))
    return int8_path


class _PairScore(torch.nn.Module):
    """Cross-encoder: (input_ids, attention_mask, token_type_ids) -> one logit per pair, [batch]."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor):
        logits = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits
        return logits[:, 0]


class _Logits(torch.nn.Module):
    """Single-text classifier or tagger: (input_ids, attention_mask) -> logits (zero token types)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = _ZeroTokenTypes(model)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
        return self.encoder(input_ids, attention_mask).logits


def export_head_onnx(model_dir: Path, out_path: Path, task: str, opset: int = 17) -> Path:
    """A fine-tuned HF classifier folder -> one self-contained ONNX file for the runtime.

    task "cross_encoder": inputs input_ids, attention_mask, token_type_ids (the pair's
    segments matter), output `score` [batch]; "sequence_classification": output `logits`
    [batch, labels]; "token_classification": output `logits` [batch, sequence, labels].
    Same exporter as the embedder (TorchScript, one file), dynamic batch and sequence.
    """
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    model_dir, out_path = Path(model_dir), Path(out_path)
    auto = AutoModelForTokenClassification if task == "token_classification" else AutoModelForSequenceClassification
    model = auto.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if task == "cross_encoder":
        sample = tokenizer(["a query", "another query"], ["a candidate text", "a longer candidate text here"],
                           padding=True, return_tensors="pt")
        module, names, args = _PairScore(model).eval(), ["input_ids", "attention_mask", "token_type_ids"], None
        args = tuple(sample[n].to(torch.int64) for n in names)
        outputs, out_axes = ["score"], {0: "batch"}
    elif task in ("sequence_classification", "token_classification"):
        sample = tokenizer(["an example text", "a second, somewhat longer example text"], padding=True,
                           return_tensors="pt")
        module, names = _Logits(model).eval(), ["input_ids", "attention_mask"]
        args = tuple(sample[n].to(torch.int64) for n in names)
        outputs = ["logits"]
        out_axes = {0: "batch", 1: "sequence"} if task == "token_classification" else {0: "batch"}
    else:
        raise ValueError(f"unknown task {task!r}")
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes[outputs[0]] = out_axes
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        torch.onnx.export(module, args, str(out_path), dynamo=False, input_names=names, output_names=outputs,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True)
    onnx.checker.check_model(str(out_path))
    return out_path


def optimize_bert_graph(src: Path, dst: Path, num_heads: int, hidden_size: int) -> Path:
    """ONNX Runtime's transformer optimiser (attention, LayerNorm, GELU fusion), offline.

    Portable (no hardware-specific kernels baked in, unlike saving an ORT_ENABLE_ALL
    session graph). The export keeps the result only where the parity gates still hold.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    optimized = optimize_model(str(src), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                               opt_level=1, use_gpu=False)
    dst.parent.mkdir(parents=True, exist_ok=True)
    optimized.save_model_to_file(str(dst))
    onnx.checker.check_model(str(dst))
    return dst
