"""The cached (GradCache) contrastive loss gives the plain in-batch loss's gradients.

A tiny random BERT keeps this fast; the check is on every parameter's gradient, so a
wrong chain rule, a missed mini-batch or an unreplayed dropout mask fails it.
"""

from __future__ import annotations

import pytest
import torch

from apex_models.models.embedder import embed_batch
from apex_models.training.contrastive import cached_info_nce, info_nce


def _tiny_model(dropout: float):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertModel(config)


def _inputs(n: int, length: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 64, (n, length), generator=g)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::3, length // 2:] = 0  # some padded rows, so pooling sees a real mask
    return {"input_ids": ids, "attention_mask": mask}


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mini_batch", [1, 3, 8])
def test_cached_gradients_equal_the_plain_loss(mini_batch: int) -> None:
    model = _tiny_model(dropout=0.0)
    embed = lambda x: embed_batch(model, x["input_ids"], x["attention_mask"])  # noqa: E731
    queries, docs = _inputs(8, 6, 1), _inputs(16, 10, 2)  # 8 positives + 8 hard negatives

    model.zero_grad()
    plain = info_nce(embed(queries), embed(docs), scale=20.0)
    plain.backward()
    expected = _grads(model)

    model.zero_grad()
    cached = cached_info_nce(embed, queries, docs, 20.0, mini_batch, lambda t: t.backward())
    got = _grads(model)

    assert float(cached) == pytest.approx(float(plain.detach()), rel=1e-6)
    assert 1.0 < float(plain.detach()) < 8.0  # a random model: not degenerate
    assert expected.keys() == got.keys() and len(got) > 10
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert any(float(g.abs().max()) > 1e-4 for g in got.values())


def test_dropout_masks_are_replayed() -> None:
    """With dropout on, the cached loss equals the plain loss on the same mini-batch forwards."""
    model = _tiny_model(dropout=0.3)
    model.train()
    embed = lambda x: embed_batch(model, x["input_ids"], x["attention_mask"])  # noqa: E731
    queries, docs = _inputs(6, 6, 3), _inputs(6, 8, 4)

    torch.manual_seed(42)
    model.zero_grad()
    q = torch.cat([embed({k: v[i:i + 2] for k, v in queries.items()}) for i in range(0, 6, 2)])
    d = torch.cat([embed({k: v[i:i + 2] for k, v in docs.items()}) for i in range(0, 6, 2)])
    plain = info_nce(q, d, 20.0)
    plain.backward()
    expected = _grads(model)

    torch.manual_seed(42)
    model.zero_grad()
    cached = cached_info_nce(embed, queries, docs, 20.0, 2, lambda t: t.backward())
    got = _grads(model)
    assert float(cached) == pytest.approx(float(plain.detach()), rel=1e-6)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)
