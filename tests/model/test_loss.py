"""The chunked head cross-entropy equals the full one and never holds [tokens, V] logits."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from modtrain.config.schema import ModelConfig
from modtrain.model.gpt import GPT
from modtrain.model.loss import chunked_lm_loss, lm_loss, mask_padded_vocab


def _model(tied: bool, vocab: int, chunk: int) -> GPT:
    # vocab 100 pads to a multiple of 64 (128): padded ids must stay out of the softmax.
    config = ModelConfig(vocab_size=vocab, num_layers=2, hidden_size=32, num_heads=2,
                         max_seq_length=16, tie_embeddings=tied, vocab_multiple=64)
    return GPT(config, seed=3, loss_chunk_tokens=chunk)


def _loss_and_grads(model: GPT, tokens: torch.Tensor, labels: torch.Tensor):
    model.zero_grad()
    out = model(tokens, labels)
    out.loss.backward()
    return out.lm_loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("vocab", [100, 128])
def test_chunked_loss_and_gradients_equal_the_full_loss(dist, tied, vocab):
    assert _model(tied, vocab, 0).config.padded_vocab_size == 128
    tokens = torch.randint(0, vocab, (3, 16), generator=torch.Generator().manual_seed(0))
    labels = torch.randint(0, vocab, (3, 16), generator=torch.Generator().manual_seed(1))
    full_loss, full = _loss_and_grads(_model(tied, vocab, 0), tokens, labels)
    for chunk in (7, 16, 48, 1000):  # uneven, even, exactly all, more than all tokens
        loss, grads = _loss_and_grads(_model(tied, vocab, chunk), tokens, labels)
        torch.testing.assert_close(loss, full_loss, rtol=1e-6, atol=0)
        for name, grad in full.items():  # fp32: within 1e-6 of the gradient's scale
            error = (grads[name] - grad).abs().max() / grad.abs().max()
            assert error <= 1e-6, (name, chunk, error)


def test_chunked_loss_matches_in_fp32_and_scales_with_the_outer_gradient():
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(24, 2, 16, generator=gen, requires_grad=True)
    weight = torch.randn(96, 16, generator=gen, requires_grad=True)
    labels = torch.randint(0, 90, (2, 24), generator=gen)
    full = lm_loss(mask_padded_vocab(hidden @ weight.t(), 90, 0), labels)
    (3.0 * full).backward()
    expected = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    chunked = chunked_lm_loss(hidden, weight, labels, 90, 10)
    (3.0 * chunked).backward()
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=0)
    torch.testing.assert_close(hidden.grad, expected[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, expected[1], rtol=1e-5, atol=1e-6)


def test_chunked_loss_without_gradients_computes_no_gradients():
    hidden, weight = torch.randn(8, 1, 4), torch.randn(10, 4)
    labels = torch.randint(0, 10, (1, 8))
    with torch.no_grad():
        loss = chunked_lm_loss(hidden, weight, labels, 10, 3)
    torch.testing.assert_close(loss, lm_loss(hidden @ weight.t(), labels), rtol=1e-6, atol=0)


class _LargestOutput(TorchDispatchMode):
    """Records the largest tensor any operator produces (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def _largest_tensor_in_loss(chunk: int) -> tuple[int, int]:
    """(largest tensor produced, largest tensor saved for backward) by loss and backward."""
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(512, 2, 8, generator=gen, requires_grad=True)  # 1024 tokens
    weight = torch.randn(32768, 8, generator=gen, requires_grad=True)
    labels = torch.randint(0, 32000, (2, 512), generator=gen)
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel() * t.element_size())
        return t

    with _LargestOutput() as mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        if chunk:
            loss = chunked_lm_loss(hidden, weight, labels, 32000, chunk)
        else:
            loss = lm_loss(mask_padded_vocab(hidden @ weight.t(), 32000, 0), labels)
        loss.backward()
    return mode.largest, max(saved)


def test_chunked_loss_shrinks_the_largest_tensor_by_the_chunk_factor():
    logits_bytes = 1024 * 32768 * 4
    full_made, full_saved = _largest_tensor_in_loss(0)
    made, saved = _largest_tensor_in_loss(256)  # 4 chunks
    assert full_made >= logits_bytes and full_saved >= logits_bytes
    assert made <= logits_bytes // 4 and saved <= logits_bytes // 4
