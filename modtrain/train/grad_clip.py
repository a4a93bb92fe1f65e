"""Gradient clipping by the global norm, for the engine without ZeRO or pipeline stages.

With ZeRO 1-3 and bf16/fp16, DeepSpeed's optimizer wrappers clip the gradients and keep
their norm. Without them (fp32, train.zero_stage=0), DeepSpeed clips one parameter at a
time in Python, all-reduces the norm even over groups of one, and does not keep it, so the
logged grad_norm would be empty. Here torch's clipping utilities (multi-tensor kernels where
the device has them) compute the same norm, summed over the tensor-parallel group with
replicated parameters (norms, biases of row-parallel linears) counted on one rank only.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.utils import clip_grads_with_norm_, get_total_norm

from modtrain.config.schema import Config
from modtrain.parallel import collectives


def modtrain_clips(config: Config) -> bool:
    """Whether modtrain clips itself (and DeepSpeed's clipping is switched off)."""
    return (config.train.grad_clip > 0 and config.train.zero_stage == 0
            and config.train.precision == "fp32" and config.parallel.pipeline == 1
            and not config.model.moe.enabled)


class GradientClipper:
    """Clips the gradients of `model` to a global 2-norm of at most `max_norm`."""

    def __init__(self, model: torch.nn.Module, max_norm: float,
                 tensor_group: dist.ProcessGroup | None = None) -> None:
        self.max_norm = max_norm
        self.tensor_group = (tensor_group if tensor_group is not None
                             and dist.get_world_size(tensor_group) > 1 else None)
        first = self.tensor_group is None or dist.get_rank(self.tensor_group) == 0
        self.params = [p for p in model.parameters() if p.requires_grad]
        # Each tensor-parallel rank holds its own shard of split parameters and a full copy
        # of the replicated ones: the sum of squares counts every element exactly once.
        self.counted = [p for p in self.params
                        if first or getattr(p, "tensor_model_parallel", False)]

    def clip_(self) -> torch.Tensor:
        """Scale the gradients in place; returns the norm before clipping (0-d tensor)."""
        norm = get_total_norm([p.grad for p in self.counted if p.grad is not None])
        if self.tensor_group is not None:
            norm = collectives.sum_in_place(norm.square(), self.tensor_group).sqrt()
        clip_grads_with_norm_([p for p in self.params if p.grad is not None], self.max_norm, norm)
        return norm
