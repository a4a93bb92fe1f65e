"""Mixture-of-Experts MLP: DeepSpeed's MoE layer (dispatch, all-to-all, experts) with
modtrain's gate, which adds no-op experts (integrated MoDE), a balance loss reduced over
every token of the micro-batch, the router z-loss and per-expert statistics.

The gate scores n = E + N experts: E SwiGLU experts and N no-op (identity) experts. Each
token takes its top-k; a route to a real expert is dispatched to a slot of that expert's
buffer if one is free (capacity C per expert, the same on every rank), else dropped. Routes
to no-op experts and dropped routes are never dispatched, so they cross no all-to-all and
cost no expert FLOPs; the token's MLP output is then zero and its residual stream passes
unchanged. For the formulas and the groups they are reduced over, see docs/moe.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from modtrain.config.schema import ModelConfig, MoEConfig
from modtrain.model.mlp import swiglu_activation

# What an expert layer reports per step (logged as NAME/layerN), besides one
# expert_load_eJ per real expert.
EXPERT_STATS = ("balance_loss", "z_loss", "dropped_frac", "noop_frac", "ep_load_ratio")


def expert_stat_names(moe: MoEConfig) -> tuple[str, ...]:
    return EXPERT_STATS + tuple(f"expert_load_e{e}" for e in range(moe.num_experts))


@dataclass(frozen=True)
class ExpertSlice:
    """This process's place among the experts: expert-parallel rank `rank` of `size`, and
    the process group whose ranks hold the other tokens of a micro-batch (data parallel):
    balance statistics are averaged over it, so any layout computes the same loss."""

    rank: int = 0
    size: int = 1
    token_group: Any = None


def expert_capacity(moe: MoEConfig, tokens: int, training: bool) -> int:
    """Slots per real expert for `tokens` tokens: ceil(k T / n * factor), at least
    min_capacity, never above k T."""
    factor = moe.capacity_factor if training else moe.eval_capacity_factor
    total = moe.num_experts + moe.noop_experts
    capacity = max(moe.min_capacity, math.ceil(moe.top_k * tokens / total * factor - 1e-9))
    return min(capacity, moe.top_k * tokens)


def one_hot(index: torch.Tensor, classes: int) -> torch.Tensor:
    """[N] -> [N, classes] int64 by comparison: F.one_hot checks its input's range with a
    host read on some devices; an index outside [0, classes) gives a row of zeros."""
    return (index.unsqueeze(-1) == torch.arange(classes, device=index.device)).long()


def _world(group: Any) -> int:
    return dist.get_world_size(group) if group is not None and dist.is_initialized() else 1


@dataclass
class Routes:
    """Gate decisions for T tokens and k routes, route-major ([k, T])."""

    expert: torch.Tensor  # chosen expert id in [0, n); >= E is a no-op expert
    weight: torch.Tensor  # combine weight (fp32)
    location: torch.Tensor  # slot in the expert's buffer
    kept: torch.Tensor  # bool: dispatched (a real expert with a free slot)
    onehot: torch.Tensor  # [k T, E] int64: the real expert each route chose (rows of zeros
    # for no-op routes); summed on the device, it gives loads without a host sync


class ExpertGate(nn.Module):
    """Top-k gate over E real and N no-op experts, in the interface DeepSpeed's MOELayer
    calls: forward(tokens, used_token, sparse_routes, use_tutel) ->
    (aux loss, capacity, E, expert ids [k, T], locations [k, T], weights [k, T], counts)."""

    def __init__(self, hidden_size: int, moe: MoEConfig, token_group: Any = None) -> None:
        super().__init__()
        self.moe = moe
        self.weight = nn.Parameter(torch.empty(moe.num_experts + moe.noop_experts, hidden_size))
        self.token_group = token_group
        self.ep_group = None
        self.last_stats: dict[str, torch.Tensor] = {}
        self.last_routes: Routes | None = None

    def _set_ep_group(self, ep_group: Any) -> None:
        self.ep_group = ep_group

    def route(self, probs: torch.Tensor) -> Routes:
        """Top-k choice and capacity: routes of rank 0 take slots before routes of rank 1
        (GShard), each in token order; no randomness, so every layout drops the same."""
        moe, (tokens, _) = self.moe, probs.shape
        top_p, top_i = probs.topk(moe.top_k, dim=-1)  # [T, k]
        weight = top_p if moe.top_k == 1 else top_p / top_p.sum(-1, keepdim=True)
        expert, weight = top_i.t().contiguous(), weight.t().contiguous()  # [k, T]
        real = expert < moe.num_experts
        onehot = one_hot(torch.where(real, expert, -1).reshape(-1), moe.num_experts)
        location = ((onehot.cumsum(0) - 1) * onehot).sum(-1).view_as(expert)
        if moe.drop_tokens:
            capacity = expert_capacity(moe, tokens, self.training)
        else:  # the largest load in the expert-parallel group: equal shapes on every rank
            load = onehot.sum(0).max().reshape(1)
            if _world(self.ep_group) > 1:
                dist.all_reduce(load, op=dist.ReduceOp.MAX, group=self.ep_group)
            capacity = max(1, int(load.item()))
        self.capacity = capacity
        return Routes(expert, weight, location, real & (location < capacity), onehot)

    def forward(self, tokens: torch.Tensor, used_token: torch.Tensor | None = None,
                sparse_routes: bool = True, use_tutel: bool = False):
        if used_token is not None or not sparse_routes or use_tutel:
            raise ValueError("ExpertGate serves DeepSpeed's sparse dispatch only")
        moe = self.moe
        logits = F.linear(tokens.float(), self.weight.float())  # [T, n]
        probs = logits.softmax(-1)
        routes = self.route(probs.detach())
        # The weights carry the gradient: recompute them from probs at the chosen experts.
        chosen = probs.gather(1, routes.expert.t()).t()
        weight = chosen if moe.top_k == 1 else chosen / chosen.sum(0, keepdim=True)
        routes.weight = weight
        balance, z_loss = self.losses(logits, probs, routes)
        aux = moe.balance_loss_coef * balance + moe.z_loss_coef * z_loss
        # Routes dispatched to each real expert: a masked sum of static shape on the device
        # (boolean indexing or bincount would wait for the host to learn a size).
        counts = (routes.onehot * routes.kept.reshape(-1, 1)).sum(0)
        self.last_stats = self.statistics(routes, balance, z_loss, counts)
        self.last_routes = routes
        index = torch.where(routes.kept, routes.expert, -1).to(torch.int32)
        # The capacity is a host integer (from shapes alone when tokens are dropped), so
        # DeepSpeed's int(C) reads a CPU tensor and waits for no device.
        return (aux, torch.tensor(self.capacity), moe.num_experts, index,
                routes.location.to(torch.int32), weight * routes.kept, counts)

    def losses(self, logits: torch.Tensor, probs: torch.Tensor, routes: Routes
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Balance loss n * sum_e f_e P_e (f_e: share of routes choosing e, before capacity
        drops; P_e: mean gate probability), both over every token of the micro-batch on all
        data-parallel ranks; z-loss: mean logsumexp(logits)^2."""
        n = probs.shape[-1]
        share = one_hot(routes.expert.reshape(-1), n).float().mean(0)  # f_e, local
        mean_prob = probs.mean(0)  # P_e, local
        world = _world(self.token_group)
        if world > 1:
            share = share.clone()
            dist.all_reduce(share, group=self.token_group)
            # Differentiable: the gradient of the global mean reaches every rank's gate.
            mean_prob = dist.nn.functional.all_reduce(mean_prob, group=self.token_group)
            share, mean_prob = share / world, mean_prob / world
        balance = n * (share * mean_prob).sum()
        z_loss = torch.logsumexp(logits, dim=-1).pow(2).mean()
        return balance, z_loss

    @torch.no_grad()
    def statistics(self, routes: Routes, balance: torch.Tensor, z_loss: torch.Tensor,
                   counts: torch.Tensor) -> dict[str, torch.Tensor]:
        moe = self.moe
        real = routes.expert < moe.num_experts
        stats = {
            "balance_loss": balance.detach(),
            "z_loss": z_loss.detach(),
            "dropped_frac": (real & ~routes.kept).float().mean(),
            "noop_frac": (~real).float().mean(),
        }
        load = counts.float()  # tokens each expert processes in this expert-parallel group
        if _world(self.ep_group) > 1:
            dist.all_reduce(load, group=self.ep_group)
        per_rank = load.view(_world(self.ep_group), -1).sum(-1)
        stats["ep_load_ratio"] = per_rank.max() / per_rank.mean().clamp_min(1e-9)
        # Share of all routes that chose each real expert (before capacity drops).
        demand = routes.onehot.sum(0).float() / routes.expert.numel()
        stats.update(zip(expert_stat_names(moe)[len(EXPERT_STATS):], demand.unbind()))
        return stats


class SwiGLUExpert(nn.Module):
    """One expert: silu(x W_gate) * (x W_up) W_down; fc1 holds [gate; up]."""

    recompute_activation = False  # train.recompute=selective: rerun silu(gate) * up in backward

    def __init__(self, hidden_size: int, ffn_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, 2 * ffn_size, bias=False)
        self.fc2 = nn.Linear(ffn_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(swiglu_activation(self.fc1(x), self.recompute_activation))


class ExpertMLP(nn.Module):
    """The MLP slot of a decoder layer holding experts: returns (output, None) like
    megatron's MLP; the gate's aux loss and statistics wait in `last_aux`/`last_stats`."""

    def __init__(self, config: Any, model: ModelConfig, expert: ExpertSlice,
                 **unused: Any) -> None:
        super().__init__()
        from deepspeed.moe.layer import MoE

        moe = model.moe
        self.moe = MoE(model.hidden_size, SwiGLUExpert(model.hidden_size, model.expert_ffn_size),
                       num_experts=moe.num_experts, ep_size=expert.size, k=moe.top_k,
                       use_rts=False, drop_tokens=moe.drop_tokens)
        self.moe.deepspeed_moe.gate = ExpertGate(model.hidden_size, moe, expert.token_group)
        self.last_aux: torch.Tensor | None = None

    @property
    def gate(self) -> ExpertGate:
        return self.moe.deepspeed_moe.gate

    @property
    def last_stats(self) -> dict[str, torch.Tensor]:
        return self.gate.last_stats

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, None]:
        out, aux, _ = self.moe(hidden)
        self.last_aux = aux
        return out, None
