"""Mixture-of-Depths routing exactly as the paper defines it."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.model.blocks import RoutedBlock, block_delta
from modtrain.model.router import membership, tokens_per_row, topk_indices

S, B, V = 32, 3, 67


def _model(dist, *overrides: str, seed: int = 0) -> GPT:
    config = load_config(None, [
        f"model.vocab_size={V}", "model.num_layers=4", "model.hidden_size=32",
        "model.num_heads=4", f"model.max_seq_length={S}", f"data.seq_length={S}",
        "model.mod.enabled=true", *overrides,
    ])
    torch.manual_seed(seed)
    return GPT(config.model)


def _routed_block(dist, capacity: float = 0.25) -> RoutedBlock:
    model = _model(dist, f"model.mod.capacity={capacity}")
    block = model.blocks[1]
    assert isinstance(block, RoutedBlock)
    return block, model._rope.window(0, S)


def test_topk_indices_sorted_and_are_the_top_k():
    torch.manual_seed(0)
    logits = torch.randn(S, B)
    k = tokens_per_row(0.125, S)
    idx = topk_indices(logits, k)
    assert idx.shape == (k, B)
    assert torch.all(idx[1:] > idx[:-1]), "indices must be in sequence order"
    for b in range(B):
        expected = set(torch.topk(logits[:, b], k).indices.tolist())
        assert set(idx[:, b].tolist()) == expected


@pytest.mark.parametrize("capacity,seq,expected", [(0.125, 64, 8), (0.125, 30, 4), (1.0, 7, 7),
                                                   (0.5, 5, 3), (0.01, 10, 1)])
def test_k_is_ceil_capacity_times_length(capacity, seq, expected):
    assert tokens_per_row(capacity, seq) == expected == max(1, math.ceil(capacity * seq))


def test_exactly_k_tokens_change_and_skipped_are_bit_identical(dist):
    block, rope = _routed_block(dist, capacity=0.25)
    x = torch.randn(S, B, 32)
    out, _, stats = block(x, rope)
    selected = membership(topk_indices(block.router.logits(x), tokens_per_row(0.25, S)), S)
    changed = (out != x).any(-1)
    assert torch.equal(changed, selected)
    assert torch.all(selected.sum(0) == tokens_per_row(0.25, S))
    assert torch.equal(out[~selected], x[~selected]), "skipped tokens must pass bit for bit"
    assert stats["routed_frac"].item() == pytest.approx(0.25)


def test_router_receives_gradient_through_the_scaled_delta(dist):
    # No aux losses: the router learns only through x + r * f(x~).
    model = _model(dist, "model.mod.router_bce_coef=0.0", "model.mod.predictor=false",
                   "model.mod.inference_routing=router")
    tokens = torch.randint(0, V, (B, S + 1))
    out = model(tokens[:, :-1], tokens[:, 1:])
    out.loss.backward()
    for block in model.blocks:
        if block.routed:
            grad = block.router.proj.weight.grad
            assert grad is not None and grad.abs().sum() > 0


def test_perturbing_a_skipped_token_changes_no_other_output(dist):
    block, rope = _routed_block(dist, capacity=0.25)
    torch.manual_seed(1)
    x = torch.randn(S, B, 32)
    logits = block.router.logits(x)
    selected = membership(topk_indices(logits, tokens_per_row(0.25, S)), S)
    j = int((~selected[:, 0]).nonzero()[0])  # an early skipped token of row 0
    # Perturb orthogonally to the router weight, so routing decisions stay the same.
    w = block.router.proj.weight[0].detach()
    noise = torch.randn(32)
    noise -= (noise @ w) / (w @ w) * w
    x2 = x.clone()
    x2[j, 0] += 5 * noise
    assert torch.equal(topk_indices(block.router.logits(x2), 8), topk_indices(logits, 8))
    out1, _, _ = block(x, rope)
    out2, _, _ = block(x2, rope)
    others = torch.ones(S, B, dtype=torch.bool)
    others[j, 0] = False
    assert torch.equal(out1[others], out2[others])


def test_selected_tokens_keep_their_absolute_positions(dist):
    # RoPE is relative, so what matters is that selected tokens keep their original
    # distances: the block must equal f on the selected tokens at their own positions, and
    # differ from f at compacted positions 0..k-1.
    block, rope = _routed_block(dist, capacity=0.25)
    x = torch.randn(S, B, 32)
    with torch.no_grad():
        out, _, _ = block(x, rope)
        logits = block.router.logits(x)
        idx = topk_indices(logits, tokens_per_row(0.25, S))
        gidx = idx.unsqueeze(-1).expand(-1, -1, 32)
        x_sel, r_sel = x.gather(0, gidx), logits.gather(0, idx).unsqueeze(-1)
        original = x_sel + r_sel * block_delta(block.layer, x_sel, rope.gather(idx))
        compacted = x_sel + r_sel * block_delta(block.layer, x_sel, rope.window(0, idx.shape[0]))
    assert torch.equal(out.gather(0, gidx), original)
    assert not torch.allclose(original, compacted)


def test_capacity_one_reproduces_the_dense_model(dist):
    dense = _model(dist, "model.mod.enabled=false")
    routed = _model(dist, "model.mod.capacity=1.0")
    missing, unexpected = routed.load_state_dict(dense.state_dict(), strict=False)
    assert not unexpected and all("router" in k for k in missing)
    for block in routed.blocks:
        if block.routed:  # r == 1: the delta enters unscaled, as in a dense block
            block.router.logits = lambda x: torch.ones(x.shape[:2], dtype=x.dtype)
    tokens = torch.randint(0, V, (B, S))
    with torch.no_grad():
        # Equal up to the order of the residual additions: a dense block adds
        # (x + attn) + mlp, a routed one x + r * (attn + mlp).
        torch.testing.assert_close(routed(tokens).logits, dense(tokens).logits,
                                   rtol=1e-5, atol=1e-5)


def test_bce_targets_are_topk_membership(dist):
    block, rope = _routed_block(dist, capacity=0.25)
    x = torch.randn(S, B, 32)
    logits = block.router.logits(x)
    targets = membership(topk_indices(logits, tokens_per_row(0.25, S)), S)
    expected = F.binary_cross_entropy_with_logits(logits, targets.float())
    _, _, stats = block(x, rope)
    torch.testing.assert_close(stats["router_bce"], expected.detach())
    assert stats["router_acc"].item() == pytest.approx(((logits > 0) == targets).float().mean())


def test_predictor_is_stop_gradient(dist):
    block, rope = _routed_block(dist, capacity=0.25)
    x = torch.randn(S, B, 32, requires_grad=True)
    pred = block.router.predictor_logits(x)
    pred.sum().backward()
    assert x.grad is None or torch.all(x.grad == 0)


def test_causal_routing_uses_the_per_token_decision(dist):
    model = _model(dist, "model.mod.inference_routing=router")
    tokens = torch.randint(0, V, (2, S))
    with torch.no_grad():
        out = model(tokens, routing="causal")
    assert out.logits.shape == (2, S, V)
    # Causal: the logits of a prefix do not depend on later tokens.
    with torch.no_grad():
        prefix = model(tokens[:, : S // 2], routing="causal")
    torch.testing.assert_close(prefix.logits, out.logits[:, : S // 2], rtol=1e-5, atol=1e-5)
