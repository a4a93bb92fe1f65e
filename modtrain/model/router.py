"""The Mixture-of-Depths router: expert-choice top-k over the sequence, per batch row.

r = w^T x is a scalar per token. In training each row keeps its k = ceil(capacity * S)
highest-scoring tokens. Top-k is not causal, so two aids learn a causal per-token
decision for sampling: (A) BCE on the router logits with top-k membership as targets,
route when sigmoid(r) > 0.5; (B) a small MLP on the router's (detached) inputs, trained
with BCE against the same targets, which never touches the language-model loss.

Routing maths runs in fp32 whatever the parameter dtype: under bf16 training DeepSpeed
casts the router to bf16, and neighbouring scores at the top-k cut are then about one
bf16 ulp apart, so a bf16 score would turn near-ties into ties and flip the selection.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from modtrain.config.schema import (
    MoDConfig,
    tokens_per_row,  # noqa: F401 - part of the routing API
)
from modtrain.model.sequence_parallel import mark_sequence_parallel, shared_weight

# The statistics `MoDRouter.aux_losses` reports (logged per routed layer as NAME/layerN).
ROUTER_STATS = ("routed_frac", "router_bce", "router_acc")
PREDICTOR_STATS = ("predictor_bce", "predictor_acc")


def stat_names(config: MoDConfig) -> tuple[str, ...]:
    """What a routed block of this config reports in training (see aux_losses)."""
    return ROUTER_STATS + (PREDICTOR_STATS if config.predictor else ())


def fp32_linear(x: torch.Tensor, layer: nn.Linear, shared: bool = False) -> torch.Tensor:
    """layer(x) computed in fp32 (input and weights upcast), whatever their dtype. `shared`:
    x is this rank's sequence shard, so the weights' gradients are summed over the tensor
    group (sequence parallelism)."""
    weight, bias = layer.weight, layer.bias
    if shared:
        weight = shared_weight(weight)
        bias = None if bias is None else shared_weight(bias)
    return F.linear(x.float(), weight.float(), None if bias is None else bias.float())


class FP32MLP(nn.Sequential):
    """Linear-SiLU-Linear (the causal predictor) computed in fp32 whatever its dtype."""

    shared = False  # sequence parallel: see fp32_linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, act, last = self
        return fp32_linear(act(fp32_linear(x, first, self.shared)), last, self.shared)


def topk_indices(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [k, B] of each row's k largest logits ([S, B]), sorted into sequence order.

    Ties go to the lowest positions: a stable descending sort keeps equal scores in
    sequence order (torch.topk leaves the order of ties unspecified)."""
    order = torch.sort(logits.float(), dim=0, descending=True, stable=True).indices[:k]
    return torch.sort(order, dim=0).values


def membership(index: torch.Tensor, seq_length: int) -> torch.Tensor:
    """Boolean [S, B] mask with True where the token was selected."""
    mask = torch.zeros(seq_length, index.shape[1], dtype=torch.bool, device=index.device)
    return mask.scatter(0, index, True)


class MoDRouter(nn.Module):
    def __init__(self, hidden_size: int, config: MoDConfig, init_std: float,
                 sequence_parallel: bool = False) -> None:
        """`sequence_parallel`: scores are computed on this rank's sequence shard."""
        super().__init__()
        self.config = config
        self.sequence_parallel = sequence_parallel
        self.proj = nn.Linear(hidden_size, 1, bias=False)
        nn.init.normal_(self.proj.weight, std=init_std)
        self.predictor: nn.Module | None = None
        if config.predictor:
            self.predictor = FP32MLP(
                nn.Linear(hidden_size, config.predictor_hidden),
                nn.SiLU(),
                nn.Linear(config.predictor_hidden, 1),
            )
            self.predictor.shared = sequence_parallel
        if sequence_parallel:
            mark_sequence_parallel(self)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Router scores r = w^T x as fp32 [S, B] (x is [S, B, H], any dtype)."""
        return fp32_linear(x, self.proj, self.sequence_parallel).squeeze(-1)

    def predictor_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The causal predictor's fp32 logits [S, B]."""
        assert self.predictor is not None
        # Stop-gradient: the predictor learns from the router, never the other way round.
        return self.predictor(x.detach()).squeeze(-1)

    def causal_mask(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Per-token routing decision usable autoregressively: [S, B] bool."""
        if self.config.inference_routing == "predictor" and self.predictor is not None:
            return self.predictor_logits(x) > 0
        return logits > 0

    def aux_losses(
        self, x: torch.Tensor, logits: torch.Tensor, selected: torch.Tensor,
        gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Causal-routing losses and their agreement with top-k; `selected` is [S, B] bool.
        `gather`: under sequence parallelism x is a shard and `logits` the whole row; it
        gathers the predictor's logits of the shards into the row."""
        target = selected.float()
        bce = F.binary_cross_entropy_with_logits(logits, target)
        routed_frac, router_bce, router_acc = ROUTER_STATS
        stats = {
            router_bce: bce.detach(),
            router_acc: ((logits > 0) == selected).float().mean(),
            routed_frac: target.mean(),
        }
        loss = self.config.router_bce_coef * bce
        if self.predictor is not None:
            pred = self.predictor_logits(x)
            pred = pred if gather is None else gather(pred)
            pred_loss = F.binary_cross_entropy_with_logits(pred, target)
            predictor_bce, predictor_acc = PREDICTOR_STATS
            stats[predictor_bce] = pred_loss.detach()
            stats[predictor_acc] = ((pred > 0) == selected).float().mean()
            loss = loss + self.config.predictor_loss_coef * pred_loss
        return loss, stats
