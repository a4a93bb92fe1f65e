"""megatron-core's tensor-parallel linears, running torch's own linear on one tensor rank.

megatron-core sends every matmul through a Python autograd function that carries the
tensor-parallel collectives (and gradient-accumulation fusion, off here). On one tensor
rank there is nothing to communicate, and that function's Python backward alone costs
about 0.1 ms per call on a CPU, a few percent of a small model's step. Modules, parameters,
names and tensor-parallel behaviour stay megatron-core's: only the single-rank matmul
changes, to the same product through torch's autograd.
"""

from __future__ import annotations

import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.utils import get_pg_size


class _PlainOnOneRank:
    """Mixin for megatron-core's parallel linears: torch's linear when the tensor-parallel
    group has one rank (and no sequence parallelism), megatron-core's function otherwise."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._one_tensor_rank = get_pg_size(self.tp_group) == 1

    def _forward_impl(self, input, weight, *args, **kwargs):
        if self._one_tensor_rank and not kwargs.get("sequence_parallel") and weight.requires_grad:
            return F.linear(input, weight, kwargs.get("bias"))
        return super()._forward_impl(input, weight, *args, **kwargs)


class ColumnLinear(_PlainOnOneRank, ColumnParallelLinear):
    pass


class RowLinear(_PlainOnOneRank, RowParallelLinear):
    pass
