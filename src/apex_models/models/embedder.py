"""The bi-encoder in torch: mean pooling over the attention mask, then L2 normalisation.

The ONNX graph the export job writes computes exactly this, so torch and ONNX vectors are
comparable one to one (the parity gate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from apex_models.models.base import resolve_base_model


def mean_pool(last_hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    mask = attention_mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def embed_batch(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                pooling: str = "mean", normalize: bool = True) -> torch.Tensor:
    """Sentence vectors for one tokenised batch; differentiable (training uses it too)."""
    out = model(input_ids=input_ids, attention_mask=attention_mask)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    if pooling == "mean":
        vectors = mean_pool(hidden, attention_mask)
    elif pooling == "cls":
        vectors = hidden[:, 0]
    else:
        raise ValueError(f"unknown pooling {pooling!r}; expected 'mean' or 'cls'")
    return torch.nn.functional.normalize(vectors, dim=-1) if normalize else vectors


@dataclass
class TorchEncoder:
    """Encodes queries and documents with their own maximum lengths, in eval mode."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    pooling: str = "mean"
    normalize: bool = True
    query_max_length: int = 64
    doc_max_length: int = 256

    @classmethod
    def from_base(cls, name: str, pooling: str = "mean", normalize: bool = True,
                  query_max_length: int = 64, doc_max_length: int = 256) -> "TorchEncoder":
        path = resolve_base_model(name)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
        model.to("cuda" if torch.cuda.is_available() else "cpu")  # mining and evaluation run where training does
        model.eval()
        return cls(model, tokenizer, pooling, normalize, query_max_length, doc_max_length)

    @torch.inference_mode()
    def encode(self, texts: list[str], max_length: int, batch_size: int = 64,
               progress: bool = False) -> np.ndarray:
        self.model.eval()
        device = next(self.model.parameters()).device
        # Longest first so each batch pads little; the original order is restored below.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, disable=not progress, desc="encode", unit="batch"):
            idx = order[start:start + batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=max_length, return_tensors="pt")
            vectors = embed_batch(self.model, batch["input_ids"].to(device),
                                  batch["attention_mask"].to(device), self.pooling, self.normalize)
            out[idx] = vectors.float().cpu().numpy()
        return out

    def encode_queries(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.encode(texts, self.query_max_length, batch_size, progress)

    def encode_documents(self, texts: list[str], batch_size: int = 64, progress: bool = False) -> np.ndarray:
        return self.encode(texts, self.doc_max_length, batch_size, progress)
