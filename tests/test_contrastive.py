"""The cached (GradCache) contrastive loss gives the plain in-batch loss's gradients.

A tiny random BERT keeps this fast; the check is on every parameter's gradient, so a
wrong chain rule, a missed mini-batch or an unreplayed dropout mask fails it.
"""

from __future__ import annotations

import os

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
    cached = cached_info_nce(embed, queries, docs, 20.0, mini_batch, lambda t, last: t.backward())
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
    cached = cached_info_nce(embed, queries, docs, 20.0, 2, lambda t, last: t.backward())
    got = _grads(model)
    assert float(cached) == pytest.approx(float(plain.detach()), rel=1e-6)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6, msg=name)


def _one_step(model, trainer, queries, docs, mini_batch: int | None) -> tuple[dict[str, torch.Tensor], int]:
    """One embedder-recipe step under DeepSpeed -> (parameters after it, optimizer steps taken)."""
    from types import SimpleNamespace

    from accelerate.state import AcceleratorState

    from apex_models.training.common import optimizer_step, piece_backward, prepare_training

    AcceleratorState._reset_state(True)      # a fresh accelerator per run in one process
    train = SimpleNamespace(lr=1e-3, weight_decay=0.0, max_steps=10, warmup_ratio=0.0, grad_accum=1)
    model, optimizer, scheduler, accelerator, _ = prepare_training(model, train, trainer, len(docs["input_ids"]))
    embed = lambda x: embed_batch(model, x["input_ids"], x["attention_mask"])  # noqa: E731
    model.train()
    with accelerator.accumulate(model):
        if mini_batch:
            cached_info_nce(embed, queries, docs, 20.0, mini_batch, piece_backward(accelerator))
            optimizer_step(accelerator, None, optimizer, scheduler)
        else:
            optimizer_step(accelerator, info_nce(embed(queries), embed(docs), 20.0), optimizer, scheduler)
    steps = accelerator.deepspeed_engine_wrapped.engine.global_steps
    params = {n: p.detach().clone() for n, p in accelerator.unwrap_model(model).named_parameters()}
    AcceleratorState._reset_state(True)
    return params, int(steps)


def test_a_cached_step_under_deepspeed_is_one_optimizer_step() -> None:
    """DeepSpeed steps the optimizer inside backward when gradients sync: the pieces of one
    cached batch must make one step together, the step a plain (uncached) batch makes.
    (DeepSpeed's CPU accelerator: the first run builds its shared-memory op, about a minute.)"""
    pytest.importorskip("deepspeed")
    from apex_models.config import DeepSpeedConfig, TrainerConfig

    zero2 = TrainerConfig(device="cpu", mixed_precision="no", gradient_checkpointing=False,
                          deepspeed=DeepSpeedConfig(zero_stage=2, gradient_clipping=0.0))
    queries, docs = _inputs(8, 6, 5), _inputs(16, 10, 6)
    start = {n: p.detach().clone() for n, p in _tiny_model(0.0).named_parameters()}

    saved = dict(os.environ)   # DeepSpeed's one-process world: leave no RANK/WORLD_SIZE for later tests
    try:
        expected, plain_steps = _one_step(_tiny_model(0.0), zero2, queries, docs, None)
        got, cached_steps = _one_step(_tiny_model(0.0), zero2, queries, docs, 4)   # 2 + 4 pieces
    finally:
        os.environ.clear()
        os.environ.update(saved)
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    assert (plain_steps, cached_steps) == (1, 1)
    moved = max(float((expected[n] - start[n]).abs().max()) for n in start)
    assert moved > 5e-4                      # Adam's first step moves weights by about lr
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-3, atol=2e-5, msg=name)
