"""The expert gate against hand computations: balance loss, z-loss, capacity drops, no-op
experts (bit-for-bit pass-through, gradient, nothing dispatched)."""

from __future__ import annotations

import math

import pytest
import torch

from modtrain.config.schema import ModelConfig, MoEConfig
from modtrain.model.experts import ExpertMLP, ExpertSlice, expert_capacity
from tests.model.host_sync import HostSyncs

HIDDEN = 16


def expert_mlp(seed: int = 0, **moe) -> ExpertMLP:
    config = ModelConfig(vocab_size=32, hidden_size=HIDDEN, num_heads=2,
                         moe=MoEConfig(enabled=True, **moe))
    torch.manual_seed(seed)
    mlp = ExpertMLP(None, config, ExpertSlice())
    with torch.no_grad():
        for p in mlp.parameters():
            p.normal_(0, 0.5)
    return mlp


def hand_routing(mlp: ExpertMLP, x: torch.Tensor):
    """Top-1 choice, per-expert slot and drop decision, token by token."""
    moe = mlp.gate.moe
    tokens = x.reshape(-1, HIDDEN).double()
    logits = tokens @ mlp.gate.weight.double().t()
    probs = logits.softmax(-1)
    capacity = expert_capacity(moe, tokens.shape[0], training=mlp.training)
    used = [0] * moe.num_experts
    choice, kept = [], []
    for t in range(tokens.shape[0]):
        e = int(probs[t].argmax())
        choice.append(e)
        ok = e < moe.num_experts and used[e] < capacity
        if e < moe.num_experts:
            used[e] += 1
        kept.append(ok)
    return logits, probs, choice, kept


def test_balance_and_z_loss_equal_hand_computation():
    mlp = expert_mlp(num_experts=4, noop_experts=2, capacity_factor=8.0,
                     balance_loss_coef=0.3, z_loss_coef=0.05)
    x = torch.randn(8, 3, HIDDEN)
    mlp(x)
    logits, probs, choice, _ = hand_routing(mlp, x)
    n, tokens = 6, len(choice)
    share = [choice.count(e) / tokens for e in range(n)]
    balance = n * sum(share[e] * probs[:, e].mean().item() for e in range(n))
    z_loss = sum(math.log(sum(math.exp(v) for v in row)) ** 2
                 for row in logits.tolist()) / tokens
    stats = mlp.last_stats
    assert stats["balance_loss"].item() == pytest.approx(balance, rel=1e-5)
    assert stats["z_loss"].item() == pytest.approx(z_loss, rel=1e-5)
    assert mlp.last_aux.item() == pytest.approx(0.3 * balance + 0.05 * z_loss, rel=1e-5)
    assert stats["noop_frac"].item() == pytest.approx(sum(c >= 4 for c in choice) / tokens)


def test_dropped_fraction_equals_hand_count():
    mlp = expert_mlp(seed=3, num_experts=2, capacity_factor=0.25, min_capacity=1)
    x = torch.randn(16, 2, HIDDEN)
    out, _ = mlp(x)
    _, _, choice, kept = hand_routing(mlp, x)
    dropped = sum(1 for k in kept if not k)
    assert dropped > 0, "the test needs a capacity that drops"
    assert mlp.last_stats["dropped_frac"].item() == pytest.approx(dropped / len(kept))
    # A dropped token's MLP output is exactly zero: its residual stream passes unchanged.
    rows = out.reshape(-1, HIDDEN)
    for t, k in enumerate(kept):
        assert bool((rows[t] == 0).all()) == (not k)


def test_noop_tokens_pass_bit_for_bit_and_the_gate_learns_from_them():
    mlp = expert_mlp(seed=1, num_experts=2, noop_experts=2, capacity_factor=8.0)
    x = torch.randn(12, 2, HIDDEN, requires_grad=True)
    residual = torch.randn(12, 2, HIDDEN)
    out, _ = mlp(x)
    _, _, choice, _ = hand_routing(mlp, x.detach())
    noop = torch.tensor([c >= 2 for c in choice]).view(12, 2)
    assert noop.any() and (~noop).any()
    after = residual + out  # the block adds the MLP output to the residual stream
    assert torch.equal(after[noop], residual[noop])
    (after.square().sum() + mlp.last_aux).backward()
    grad = mlp.gate.weight.grad
    assert grad is not None and bool((grad[2:].abs().sum(-1) > 0).all()), (
        "the no-op experts' gate rows get no gradient")


def test_noop_routes_are_never_dispatched():
    """Count the rows that reach the experts: kept real routes only, in E x C slots."""
    mlp = expert_mlp(seed=2, num_experts=2, noop_experts=6, capacity_factor=2.0)
    seen = []
    hook = mlp.moe.deepspeed_moe.experts.register_forward_hook(
        lambda module, args, output: seen.append(args[0].detach().clone()))
    x = torch.randn(10, 4, HIDDEN)
    mlp(x)
    hook.remove()
    _, _, choice, kept = hand_routing(mlp, x)
    dispatched = seen[0].reshape(-1, HIDDEN)
    capacity = expert_capacity(mlp.gate.moe, 40, training=True)
    assert dispatched.shape[0] == 2 * capacity  # the buffer: E x C, sized by E + N experts
    assert int((dispatched.abs().sum(-1) > 0).sum()) == sum(kept)
    assert sum(kept) <= sum(c < 2 for c in choice) < 40


def test_top2_weights_normalised_over_the_two_choices():
    mlp = expert_mlp(seed=4, num_experts=4, top_k=2, capacity_factor=8.0)
    x = torch.randn(6, 1, HIDDEN)
    mlp(x)
    routes = mlp.gate.last_routes
    assert torch.allclose(routes.weight.sum(0), torch.ones(6))
    assert bool(routes.kept.all())


def test_gate_forward_waits_for_no_host():
    """No boolean indexing, bincount, nonzero or .item() in the gate (top-2, drops, no-ops)."""
    mlp = expert_mlp(seed=5, num_experts=4, noop_experts=2, top_k=2, capacity_factor=0.5,
                     min_capacity=1)
    tokens = torch.randn(24, HIDDEN, requires_grad=True)
    with HostSyncs() as syncs:
        aux, *_ = mlp.gate(tokens)
        aux.backward()
    assert syncs.found == []


def test_loads_and_counts_equal_the_indexing_they_replace():
    """Dispatch counts and per-expert demand equal bincount / boolean-mask references."""
    mlp = expert_mlp(seed=6, num_experts=3, noop_experts=2, top_k=2, capacity_factor=0.5,
                     min_capacity=1)
    _, _, _, _, _, _, counts = mlp.gate(torch.randn(20, HIDDEN))
    routes, moe = mlp.gate.last_routes, mlp.gate.moe
    assert bool((~routes.kept & (routes.expert < 3)).any()), "the test needs drops"
    assert torch.equal(counts, routes.expert[routes.kept].bincount(minlength=5)[:3])
    real = routes.expert[routes.expert < moe.num_experts]
    for e in range(3):
        expected = (real == e).sum() / routes.expert.numel()
        assert torch.equal(mlp.last_stats[f"expert_load_e{e}"], expected)
