"""Initial weights that do not depend on the parallel layout.

Every parameter is drawn in full (TP=1 shape) from a generator seeded by the run seed and
the parameter's name, then split like megatron-core splits it. Any tensor-parallel size
(and, by name, any pipeline split) therefore starts from the same model. How each kind of
parameter is drawn is its row's `init` in the parameter table. Parameters are drawn on the
CPU one at a time and copied into the parameter wherever it lives (the engine builds the
model on the rank's device), so the host holds at most one full parameter; a ZeRO-3
partitioned parameter (built under `deepspeed.zero.Init`) keeps only this rank's partition.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable

import torch
from torch import nn

from modtrain.config.schema import ModelConfig
from modtrain.model.experts import ExpertSlice
from modtrain.model.param_table import Init, expert_index, param_kind, with_expert_index
from modtrain.model.tensor_split import TensorSlice, full_shape, partition_dim, shard


def _full_init(name: str, shape: torch.Size, config: ModelConfig, gen: torch.Generator):
    kind = param_kind(name)
    if kind is None:
        raise ValueError(f"{name} has no row in modtrain.model.param_table.PARAMETERS")
    # Drawn on the CPU in fp32 whatever the parameter's device and dtype: the generator
    # (mt19937) defines the values, and in-place arithmetic keeps one full tensor alive.
    if kind.init is Init.ONES:
        return torch.ones(shape, dtype=torch.float32, device="cpu")
    if kind.init is Init.FAN_IN_UNIFORM:
        bound = 1.0 / math.sqrt(shape[1] if len(shape) == 2 else shape[0])
        full = torch.rand(shape, generator=gen, dtype=torch.float32, device="cpu")
        return full.mul_(2).sub_(1).mul_(bound)
    std = config.init_std
    if kind.init is Init.NORMAL_DEPTH_SCALED:  # GPT-2 / megatron: scale by depth
        std = std / math.sqrt(2.0 * config.num_layers)
    return torch.randn(shape, generator=gen, dtype=torch.float32, device="cpu").mul_(std)


def _local_shape(param: nn.Parameter) -> torch.Size:
    """The shape of this tensor rank's parameter; ZeRO-3 keeps it in `ds_shape` once the
    parameter is partitioned (its `data` is then empty)."""
    return getattr(param, "ds_shape", param.shape)


def _store(param: nn.Parameter, value: torch.Tensor) -> None:
    """Write `value` (this tensor rank's whole parameter) into `param`, or, for a ZeRO-3
    partitioned parameter, only this rank's partition of its flattened, padded elements."""
    part = getattr(param, "ds_tensor", None)
    if part is None:
        param.copy_(value.to(param.dtype))
        return
    start = part.ds_numel * param.ds_zero_partition_rank
    flat = value.reshape(-1)[start:start + part.ds_numel]
    part.zero_()  # the padding past the last element
    part[: flat.numel()].copy_(flat.to(part.dtype))


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
        full = _full_init(name, full_shape(_local_shape(param), name, tensor.size), config, gen)
        _store(param, shard(full, name, tensor.rank, tensor.size))
        del full  # before the next parameter is drawn
        dim = partition_dim(name)
        if dim is not None and not hasattr(param, "tensor_model_parallel"):
            # megatron sets these only when it initialises; DeepSpeed's gradient norm reads
            # them to count each split parameter on every rank and replicated ones once.
            param.tensor_model_parallel = True
            param.partition_dim = dim
            param.partition_stride = 1
