"""Distil a sentence embedder into a static one: a vector per vocabulary token, no network.

Why: adding a memory costs one transformer pass, and on two cores that caps the store at
about 50 adds a second (eval/results/memory.md), far from the 1,000 the runtime aims
for. A static embedder (Model2Vec's recipe: Tulkens and van Dongen, 2024) embeds a text
as the weighted mean of per-token vectors: a table lookup, so tokenising is the cost
(2,000-3,000 corpus texts a second on 2 cores), at some cost in quality;
eval/bench_static_embedder.py measures both.

The recipe, as Model2Vec distils (its `distill` extra pins transformers < 5.4, which this
environment's stack is past, so the few steps live here):
  1. every vocabulary token, alone between [CLS] and [SEP], through the sentence model
     with its own pooling (mean over the three positions, as the model pools a sentence);
  2. PCA to `dims` dimensions (drops the common direction that all single-token inputs share);
  3. per-token weights from token frequencies in a corpus (SIF: a / (a + p(token))), so
     frequent sub-words count less; without a corpus, Zipf's law on the vocabulary rank;
  4. optionally (`fit_texts`), the table is then trained so that the mean of a text's rows
     points where the sentence model's own embedding of that text points (cosine loss,
     full-batch Adam over a sparse token-count matrix): Model2Vec's "tokenlearn" idea. The
     texts are the pipeline's corpora, never a benchmark.
The output folder holds `static.npy` (float32 [vocab, dims], weights folded in),
`tokenizer.json` and `static.json`; runtime/static_embedder.py reads it without torch.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from apex_models.runtime.static_embedder import SPEC, TABLE, TOKENIZER  # the folder's layout, in one place

log = logging.getLogger(__name__)


def token_vectors(model_dir: Path, batch_size: int = 1024) -> np.ndarray:
    """float32 [vocab, hidden]: the model's mean-pooled embedding of each token alone."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    vocab = len(tokenizer)
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    out = np.zeros((vocab, model.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in tqdm(range(0, vocab, batch_size), desc="token vectors", unit="batch"):
            ids = torch.arange(start, min(start + batch_size, vocab))
            batch = torch.stack([torch.full_like(ids, cls), ids, torch.full_like(ids, sep)], dim=1)
            hidden = model(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
            out[start:start + len(ids)] = hidden.mean(dim=1).numpy()
    return out


def sif_weights(token_counts: Counter | None, vocab: int, a: float = 1e-3) -> np.ndarray:
    """a / (a + p(token)): p from corpus counts (add-one smoothed), else Zipf on the id."""
    if token_counts:
        counts = np.ones(vocab, dtype=np.float64)
        for token_id, n in token_counts.items():
            if 0 <= token_id < vocab:
                counts[token_id] += n
        p = counts / counts.sum()
    else:
        p = 1.0 / np.arange(1, vocab + 1, dtype=np.float64)
        p /= p.sum()
    return (a / (a + p)).astype(np.float32)


def count_tokens(tokenizer_path: Path, texts: Iterable[str], batch: int = 2048) -> Counter:
    """Token id frequencies of `texts` under the model's own tokenizer (no special tokens)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_truncation()
    tok.no_padding()
    counts: Counter = Counter()
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == batch:
            for enc in tok.encode_batch(chunk, add_special_tokens=False):
                counts.update(enc.ids)
            chunk = []
    for enc in tok.encode_batch(chunk, add_special_tokens=False):
        counts.update(enc.ids)
    return counts


def fit_to_teacher(table: np.ndarray, tokenizer_path: Path, texts: list[str], teacher: np.ndarray,
                   steps: int = 300, lr: float = 1e-2, max_length: int = 256, seed: int = 0) -> tuple[np.ndarray, list]:
    """Train `table` so that normalize(mean of a text's rows) matches the teacher's unit vector.

    Returns the trained table and the loss curve [(step, mean 1 - cosine)]. Rows of tokens
    that never occur in `texts` keep their distilled values.
    """
    import torch
    from tokenizers import Tokenizer
    from tqdm.auto import tqdm

    if table.shape[1] != teacher.shape[1]:
        raise ValueError(f"table has {table.shape[1]} dimensions, the teacher {teacher.shape[1]}: fit before PCA")
    torch.manual_seed(seed)
    tok = Tokenizer.from_file(str(tokenizer_path))
    tok.no_padding()
    tok.enable_truncation(max_length=max_length)
    ids = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    keep = [i for i, x in enumerate(ids) if x]
    rows = torch.tensor([r for r, i in enumerate(keep) for _ in ids[i]])
    cols = torch.tensor([t for i in keep for t in ids[i]])
    vals = torch.cat([torch.full((len(ids[i]),), 1.0 / len(ids[i])) for i in keep])
    mean = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (len(keep), table.shape[0]),
                                   check_invariants=True).coalesce()
    target = torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(teacher[keep])).float(), dim=1)
    weights = torch.nn.Parameter(torch.from_numpy(table.copy()))
    opt = torch.optim.Adam([weights], lr=lr)
    curve = []
    for step in tqdm(range(1, steps + 1), desc="fit static table", unit="step"):
        pred = torch.nn.functional.normalize(torch.sparse.mm(mean, weights), dim=1)
        loss = (1 - (pred * target).sum(dim=1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % 50 == 0 or step == steps:
            curve.append((step, round(float(loss.detach()), 5)))
    return weights.detach().numpy(), curve


def distill_static(model_dir: Path, out_dir: Path, dims: int = 256, corpus: Iterable[str] | None = None,
                   max_length: int = 512, seed: int = 0, fit_texts: list[str] | None = None,
                   fit_steps: int = 300, teacher_max_length: int = 256) -> dict:
    """Write a static embedder distilled from `model_dir` (a Hugging Face folder) to `out_dir`."""
    from sklearn.decomposition import PCA

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    tokenizer_src = model_dir / TOKENIZER
    if not tokenizer_src.is_file():
        raise FileNotFoundError(f"{tokenizer_src} missing: the static embedder needs the fast tokenizer's file")
    vectors = token_vectors(model_dir)
    if not 0 < dims <= vectors.shape[1]:
        raise ValueError(f"dims must be in 1..{vectors.shape[1]}, got {dims}")
    counts = count_tokens(tokenizer_src, corpus) if corpus is not None else None
    weights = sif_weights(counts, len(vectors))
    curve: list = []
    if fit_texts:
        from apex_models.models.embedder import TorchEncoder

        teacher = TorchEncoder.from_base(str(model_dir)).encode(fit_texts, teacher_max_length, progress=True)
        # SIF weights folded in before the fit, so they are its starting point, not a fixed factor
        vectors, curve = fit_to_teacher(vectors * weights[:, None], tokenizer_src, fit_texts, teacher,
                                        steps=fit_steps, max_length=teacher_max_length, seed=seed)
        weights = np.ones(len(vectors), dtype=np.float32)
    pca = PCA(n_components=dims, random_state=seed)
    reduced = pca.fit_transform(vectors).astype(np.float32)
    table = reduced * weights[:, None]
    out_dir.mkdir(parents=True, exist_ok=True)
    np.save(out_dir / TABLE, table)
    (out_dir / TOKENIZER).write_bytes(tokenizer_src.read_bytes())
    spec = {"format": "static-mean-v1", "dimension": dims, "vocab": int(table.shape[0]), "max_length": max_length,
            "normalize": True, "source": model_dir.name, "weights": "corpus" if counts else "zipf",
            "corpus_tokens": int(sum(counts.values())) if counts else 0,
            "explained_variance": round(float(pca.explained_variance_ratio_.sum()), 4),
            "fit_texts": len(fit_texts or []), "fit_loss": curve}
    (out_dir / SPEC).write_text(json.dumps(spec, indent=2) + "\n")
    log.info("static embedder: %d x %d from %s (%s weights)", table.shape[0], dims, model_dir, spec["weights"])
    return spec
