"""Mixture-of-Experts MLP of a modtrain export (model.moe), in plain torch.

The gate scores E SwiGLU experts and N no-op experts; each token takes its top-k (k = 2:
weights renormalised over the two). A token's output is the weighted sum of its real
experts' outputs; a no-op choice adds nothing, so the token keeps its residual stream.
Capacity is a training-time limit on a whole batch: the export routes every token to its
choice, which equals the training model in evaluation whenever no expert overflows
(model.moe.eval_capacity_factor large enough).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ExpertSwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int,
                 noop_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(hidden_size, num_experts + noop_experts, bias=False)
        self.experts = nn.ModuleList(ExpertSwiGLU(hidden_size, intermediate_size)
                                     for _ in range(num_experts))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        probs = F.linear(tokens.float(), self.gate.weight.float()).softmax(-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        weight = top_p if self.top_k == 1 else top_p / top_p.sum(-1, keepdim=True)
        out = torch.zeros_like(tokens, dtype=torch.float32)
        for e, expert in enumerate(self.experts):  # only the tokens that chose expert e
            token, route = (top_i == e).nonzero(as_tuple=True)
            if token.numel():
                y = expert(tokens[token]).float() * weight[token, route].unsqueeze(-1)
                out.index_add_(0, token, y)
        return out.to(x.dtype).view_as(x)
