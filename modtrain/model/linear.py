"""megatron-core's tensor-parallel linears, running torch's own linear on one tensor rank.

megatron-core wraps every matmul in Python autograd functions: one that carries the
tensor-parallel collectives, and around it the region mappings (copy to / reduce from the
tensor-parallel region), which are identities on one rank but still cost a Python forward
and backward each, about 0.1 ms per linear on a CPU and a few percent of a small model's
step. Modules, parameters, names and tensor-parallel behaviour stay megatron-core's: on a
tensor-parallel group of one (no sequence parallelism, no expert or deferred-gradient
communication) the forward is the same product through torch's autograd. Under sequence
parallelism the column-parallel input is gathered and the row-parallel output
reduce-scattered along the sequence (model/sequence_parallel.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.utils import get_pg_size

from modtrain.model.sequence_parallel import (
    gathered_linear,
    reduce_scatter_to_sequence,
    shared_weight,
)


class _PlainOnOneRank:
    """Mixin for megatron-core's parallel linears: decides once whether this linear has
    nothing to communicate, in which case `forward` is torch's linear."""

    # set by megatron-core's linear that this class is mixed into
    tp_group: Any
    sequence_parallel: bool
    explicit_expert_comm: bool
    config: Any

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._plain = (get_pg_size(self.tp_group) == 1 and not self.sequence_parallel
                       and not self.explicit_expert_comm
                       and not self.config.defer_embedding_wgrad_compute
                       and not self.config.cpu_offloading)


class ColumnLinear(_PlainOnOneRank, ColumnParallelLinear):
    def forward(self, input_: torch.Tensor, weight: torch.Tensor | None = None,
                runtime_gather_output: bool | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not (self._plain or self.sequence_parallel):
            return super().forward(input_, weight, runtime_gather_output)
        weight = self.weight if weight is None else weight  # the tied embedding in the head
        if self.sequence_parallel:  # [S/tp, B, H] in, [S, B, out/tp] out
            out = gathered_linear(input_, weight, self.tp_group)
            if self.bias is not None and not self.skip_bias_add:
                return out + self.bias, None
            return out, self.bias
        if self.skip_bias_add:
            return F.linear(input_, weight), self.bias
        return F.linear(input_, weight, self.bias), None


class RowLinear(_PlainOnOneRank, RowParallelLinear):
    def forward(self, input_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.sequence_parallel:  # [S, B, in/tp] in, [S/tp, B, H] out (summed over ranks)
            out = reduce_scatter_to_sequence(F.linear(input_, self.weight), self.tp_group)
            if self.bias is not None and not self.skip_bias_add:
                return out + shared_weight(self.bias), None  # added to this rank's tokens only
            return out, self.bias
        if not self._plain:
            return super().forward(input_)
        if self.skip_bias_add:
            return F.linear(input_, self.weight), self.bias
        return F.linear(input_, self.weight, self.bias), None
