"""Sequence-parallel regions: activations split along the sequence over the tensor group.

The same autograd regions as megatron-core's `tensor_parallel.mappings` (scatter to /
gather from / reduce-scatter to the sequence-parallel region) and the column-parallel
linear that saves only its sequence shard and gathers it again in backward (megatron's
LinearWithGradAccumulationAndAsyncCommunication). megatron-core allocates their outputs on
`torch.cuda.current_device()` (and its linear in a CUDA-only global buffer); here every
output is allocated on its input's device, so one code path runs on gloo/CPU and NCCL/GPU.
Parameters that see only this rank's tokens (norms, MoD routers) pass through
megatron-core's `copy_to_tensor_model_parallel_region`: identity forward, all-reduce of
their gradient over the tensor group in backward (megatron sums them after backward).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel.mappings import copy_to_tensor_model_parallel_region


def tensor_group() -> dist.ProcessGroup:
    return parallel_state.get_tensor_model_parallel_group()


def _all_gather(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    n = dist.get_world_size(group)
    out = torch.empty((x.shape[0] * n, *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.all_gather_into_tensor(out, x.contiguous(), group=group)
    return out


def _reduce_scatter(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    n = dist.get_world_size(group)
    if x.shape[0] % n:
        raise ValueError(f"{x.shape[0]} tokens do not split over {n} sequence-parallel ranks")
    out = torch.empty((x.shape[0] // n, *x.shape[1:]), dtype=x.dtype, device=x.device)
    dist.reduce_scatter_tensor(out, x.contiguous(), group=group)
    return out


def _split(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    n, r = dist.get_world_size(group), dist.get_rank(group)
    if x.shape[0] % n:
        raise ValueError(f"{x.shape[0]} tokens do not split over {n} sequence-parallel ranks")
    return x.chunk(n, dim=0)[r].contiguous()


class _Scatter(torch.autograd.Function):
    """Forward: keep this rank's chunk of dim 0; backward: all-gather."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _split(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.group), None


class _Gather(torch.autograd.Function):
    """Forward: all-gather dim 0. Backward: reduce-scatter when each rank's use of the
    gathered tensor is partial (a tensor-parallel matmul, a rank's own tokens), the rank's
    chunk when every rank computes the same thing from it (a replicated loss)."""

    @staticmethod
    def forward(ctx, x, group, partial_grad):
        ctx.group, ctx.partial_grad = group, partial_grad
        return _all_gather(x, group)

    @staticmethod
    def backward(ctx, grad):
        if ctx.partial_grad:
            return _reduce_scatter(grad, ctx.group), None, None
        return _split(grad, ctx.group), None, None


class _ReduceScatter(torch.autograd.Function):
    """Forward: sum over ranks, keep this rank's chunk of dim 0; backward: all-gather."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _reduce_scatter(x, group)

    @staticmethod
    def backward(ctx, grad):
        return _all_gather(grad, ctx.group), None


class _GatheredLinear(torch.autograd.Function):
    """x_shard [s, B, H] -> all_gather(x) @ W^T [S, B, out]; saves the shard, not the
    gathered input, and gathers it again for the weight gradient."""

    @staticmethod
    def forward(ctx, x, weight, group):
        ctx.group = group
        ctx.save_for_backward(x, weight)
        return F.linear(_all_gather(x, group), weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        total = _all_gather(x, ctx.group)
        grad_x = _reduce_scatter(grad.matmul(weight), ctx.group)
        grad_w = grad.flatten(0, -2).t().matmul(total.flatten(0, -2))
        return grad_x, grad_w, None


def scatter_to_sequence(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _Scatter.apply(x, group)


def gather_from_sequence(x: torch.Tensor, group: dist.ProcessGroup,
                         partial_grad: bool = True) -> torch.Tensor:
    return _Gather.apply(x, group, partial_grad)


def reduce_scatter_to_sequence(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    return _ReduceScatter.apply(x, group)


def gathered_linear(x: torch.Tensor, weight: torch.Tensor,
                    group: dist.ProcessGroup) -> torch.Tensor:
    return _GatheredLinear.apply(x, weight, group)


def shared_weight(weight: torch.Tensor) -> torch.Tensor:
    """A replicated parameter used on this rank's tokens only: its gradient is summed over
    the tensor group in backward."""
    return copy_to_tensor_model_parallel_region(weight, group=tensor_group())


def mark_sequence_parallel(module: torch.nn.Module) -> None:
    """Tag the module's parameters as megatron-core does (`param.sequence_parallel`)."""
    for p in module.parameters():
        p.sequence_parallel = True


class SequenceParallelRMSNorm(torch.nn.RMSNorm):
    """RMSNorm over this rank's sequence shard; the weight's gradient is summed over ranks."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__(hidden_size, eps=eps)
        mark_sequence_parallel(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.normalized_shape, shared_weight(self.weight), self.eps)
