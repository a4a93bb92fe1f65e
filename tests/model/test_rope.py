"""RoPE from modtrain's table equals megatron-core's rotation, at every position."""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rope_utils import _apply_rotary_pos_emb_bshd

from modtrain.model.rope import Rope, rope_frequencies

S, B, HEADS, D = 12, 3, 2, 16


def test_rope_equals_megatron_core_bit_for_bit():
    torch.manual_seed(0)
    x = torch.randn(S, B, HEADS, D)
    want = _apply_rotary_pos_emb_bshd(x, rope_frequencies(S, D, 10000.0))
    assert torch.equal(Rope.table(S, D, 10000.0).apply(x), want)


def test_window_and_gather_keep_absolute_positions():
    torch.manual_seed(0)
    rope = Rope.table(S, D, 500.0)
    x = torch.randn(S, B, HEADS, D)
    whole = rope.apply(x)
    assert torch.equal(rope.window(4, 5).apply(x[4:9]), whole[4:9])
    index = torch.tensor([[0, 3, 1], [5, 7, 2], [11, 8, 6]])  # [k, B]: per-row positions
    picked = torch.stack([x[index[:, b], b] for b in range(B)], dim=1)
    got = rope.gather(index).apply(picked)
    want = torch.stack([whole[index[:, b], b] for b in range(B)], dim=1)
    assert torch.equal(got, want)


def test_gradient_is_the_inverse_rotation():
    """Backward through roll: d<rope(x), g>/dx = rope^-1(g), the rotation by -angle."""
    torch.manual_seed(0)
    rope = Rope.table(S, D, 10000.0)
    x = torch.randn(S, B, HEADS, D, requires_grad=True)
    g = torch.randn(S, B, HEADS, D)
    (rope.apply(x) * g).sum().backward()
    inverse = Rope(rope.cos, -rope.signed_sin).apply(g)
    torch.testing.assert_close(x.grad, inverse, rtol=1e-6, atol=1e-6)
