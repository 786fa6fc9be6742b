"""In-batch contrastive loss for the bi-encoder, plain or cached (GradCache).

The loss is InfoNCE over a batch: query i's positive is document i; every other document
in the batch (the other positives, then any hard negatives appended after them) is a
negative. More rows mean more negatives, which is what contrastive retrieval training
gains most from, but activations for the whole batch must fit in memory at once.

The cached form (Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under
Memory Limited Setup") removes that limit with the same gradients:

1. embed every text without autograd, in mini-batches (only the vectors are kept);
2. compute the loss on those vectors and its gradient with respect to each vector;
3. re-embed each mini-batch with autograd and back-propagate `vector . gradient`, which
   by the chain rule adds exactly that mini-batch's share of d loss / d parameters.

Dropout must draw the same masks in steps 1 and 3, so each mini-batch's RNG state is
captured in step 1 and replayed in step 3 (:class:`RandContext`).
"""

from __future__ import annotations

from typing import Callable

import torch

Embed = Callable[[dict[str, torch.Tensor]], torch.Tensor]


def info_nce(queries: torch.Tensor, documents: torch.Tensor, scale: float) -> torch.Tensor:
    """Cross-entropy of each query against all documents; row i's positive is document i."""
    logits = (queries @ documents.T).float() * scale
    return torch.nn.functional.cross_entropy(logits, torch.arange(len(queries), device=logits.device))


class RandContext:
    """Captures torch's CPU (and CUDA) RNG state now; `with ctx:` replays it (forked)."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        self.cpu_state = torch.get_rng_state()
        self.devices = sorted({t.device.index or 0 for t in tensors if t.is_cuda})
        self.cuda_states = [torch.cuda.get_rng_state(d) for d in self.devices]
        self._fork = None

    def __enter__(self) -> None:
        self._fork = torch.random.fork_rng(devices=self.devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        for device, state in zip(self.devices, self.cuda_states):
            torch.cuda.set_rng_state(state, device)

    def __exit__(self, *exc) -> None:
        self._fork.__exit__(*exc)
        self._fork = None


def _chunks(inputs: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    n = len(next(iter(inputs.values())))
    return [{k: v[i:i + size] for k, v in inputs.items()} for i in range(0, n, size)]


def cached_info_nce(embed: Embed, query_inputs: dict[str, torch.Tensor], doc_inputs: dict[str, torch.Tensor],
                    scale: float, mini_batch_size: int, backward: Callable[[torch.Tensor, bool], None]) -> torch.Tensor:
    """InfoNCE with GradCache: back-propagates into the model's parameters and returns the loss.

    `embed` maps one tokenised mini-batch to vectors with autograd; `backward(surrogate,
    last)` back-propagates one mini-batch's surrogate, `last` True for the batch's final
    piece (:func:`apex_models.training.common.piece_backward` for accelerate, where
    DeepSpeed may step the optimizer only then; ``lambda t, last: t.backward()`` bare).
    Peak activation memory is one mini-batch, whatever the batch size; the parameter
    gradients equal those of :func:`info_nce` on the whole batch (tests check this).
    The returned loss is detached: its gradient has already been applied.
    """
    if mini_batch_size < 1:
        raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
    groups = [_chunks(query_inputs, mini_batch_size), _chunks(doc_inputs, mini_batch_size)]
    states: list[list[RandContext]] = [[], []]
    vectors: list[torch.Tensor] = []
    # 1. every vector without a graph; remember each mini-batch's RNG for step 3
    with torch.no_grad():
        for g, chunks in enumerate(groups):
            parts = []
            for chunk in chunks:
                states[g].append(RandContext(*chunk.values()))
                parts.append(embed(chunk))
            vectors.append(torch.cat(parts).detach().requires_grad_(True))
    # 2. the loss and d loss / d vector
    loss = info_nce(vectors[0], vectors[1], scale)
    loss.backward()
    grads = [v.grad for v in vectors]
    # 3. replay each mini-batch with a graph; the dot product carries the cached gradient
    for g, chunks in enumerate(groups):
        start = 0
        for c, (chunk, state) in enumerate(zip(chunks, states[g])):
            with state:
                part = embed(chunk)
            cached = grads[g][start:start + len(part)]
            start += len(part)
            last = g == len(groups) - 1 and c == len(chunks) - 1
            backward((part * cached.to(part.dtype)).sum(), last)
    return loss.detach()
