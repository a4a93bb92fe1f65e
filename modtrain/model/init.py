"""Initial weights that do not depend on the parallel layout.

Every parameter is drawn in full (TP=1 shape) from a generator seeded by the run seed and
the parameter's name, then split like megatron-core splits it. Any tensor-parallel size
(and, by name, any pipeline split) therefore starts from the same model. How each kind of
parameter is drawn is its row's `init` in the parameter table.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
from torch import nn

from modtrain.config.schema import ModelConfig
from modtrain.model.experts import ExpertSlice
from modtrain.model.param_layout import Init, expert_index, param_kind, with_expert_index
from modtrain.model.tensor_split import TensorSlice, full_shape, partition_dim, shard


def _full_init(name: str, shape: torch.Size, config: ModelConfig, gen: torch.Generator):
    kind = param_kind(name)
    if kind is None:
        raise ValueError(f"{name} has no row in modtrain.model.param_layout.PARAMETERS")
    if kind.init is Init.ONES:
        return torch.ones(shape)
    if kind.init is Init.FAN_IN_UNIFORM:
        bound = 1.0 / math.sqrt(shape[1] if len(shape) == 2 else shape[0])
        return (torch.rand(shape, generator=gen) * 2 - 1) * bound
    std = config.init_std
    if kind.init is Init.NORMAL_DEPTH_SCALED:  # GPT-2 / megatron: scale by depth
        std = std / math.sqrt(2.0 * config.num_layers)
    return torch.randn(shape, generator=gen) * std


@torch.no_grad()
def initialize_parameters(
    model: nn.Module,
    config: ModelConfig,
    seed: int,
    tensor: TensorSlice | None = None,
    rename: Callable[[str], str] | None = None,
    expert: ExpertSlice | None = None,
) -> None:
    """Draw every parameter from (seed, canonical GPT name), and keep `tensor`'s shard;
    `rename` maps other module trees (pipeline stages) onto GPT's names. An expert is drawn
    under its global id (`expert`: this rank's expert-parallel slice), so any expert-parallel
    size starts from the same experts."""
    tensor = tensor or TensorSlice()
    expert = expert or ExpertSlice()
    local_experts = config.moe.num_experts // expert.size
    for module_name, param in model.named_parameters():
        name = rename(module_name) if rename else module_name
        local = expert_index(name)
        if local is not None:
            name = with_expert_index(name, expert.rank * local_experts + local)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
        full = _full_init(name, full_shape(param.shape, name, tensor.size), config, gen)
        param.copy_(shard(full, name, tensor.rank, tensor.size).to(param.dtype))
        dim = partition_dim(name)
        if dim is not None and not hasattr(param, "tensor_model_parallel"):
            # megatron sets these only when it initialises; DeepSpeed's gradient norm reads
            # them to count each split parameter on every rank and replicated ones once.
            param.tensor_model_parallel = True
            param.partition_dim = dim
            param.partition_stride = 1
