"""How each GPT parameter is split across tensor-parallel ranks (megatron-core's layout).

Used to build TP-independent initial weights, to gather gradients for the layout tests,
and to merge or re-split checkpoints. Names are GPT state-dict names.
"""

from __future__ import annotations

import torch

# Column-parallel: output features split (dim 0); the vocabulary split of the embedding too.
_COLUMN = ("linear_qkv.weight", "linear_fc1.weight", "embedding.weight", "output_layer.weight")
# Row-parallel: input features split (dim 1).
_ROW = ("linear_proj.weight", "linear_fc2.weight")
# SwiGLU fc1 holds [gate; up]; each rank holds [gate_r; up_r], not a contiguous slice.
_GATED = ("linear_fc1.weight",)


def partition_dim(name: str) -> int | None:
    """The dimension `name` is split along, or None for a parameter replicated on all ranks."""
    if name.endswith(_COLUMN):
        return 0
    if name.endswith(_ROW):
        return 1
    return None


def shard(full: torch.Tensor, name: str, rank: int, size: int) -> torch.Tensor:
    """This rank's part of a full (TP=1) tensor."""
    dim = partition_dim(name)
    if dim is None or size == 1:
        return full
    if name.endswith(_GATED):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(size, dim=0)[rank], up.chunk(size, dim=0)[rank]], dim=0)
    return full.chunk(size, dim=dim)[rank].contiguous()


def merge(parts: list[torch.Tensor], name: str) -> torch.Tensor:
    """The full tensor from every rank's part (rank order)."""
    dim = partition_dim(name)
    if dim is None or len(parts) == 1:
        return parts[0]
    if name.endswith(_GATED):
        halves = [p.chunk(2, dim=0) for p in parts]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(parts, dim=dim)


def full_shape(local: torch.Size, name: str, size: int) -> torch.Size:
    dim = partition_dim(name)
    if dim is None:
        return local
    shape = list(local)
    shape[dim] *= size
    return torch.Size(shape)


def universal_checkpoint_info(names: list[str]) -> dict[str, list[str]]:
    """DeepSpeed universal-checkpoint patterns that describe this layout, one exact pattern
    per parameter (its converter rejects patterns that match nothing)."""
    import re

    info: dict[str, list[str]] = {
        "tp_replicated_parameter_patterns": [],
        "parameter_with_row_parallelism_patterns": [],
        "parameter_with_2_sub_params_cat_dim_0": [],
    }
    for name in names:
        pattern = "^" + re.escape(name) + "$"
        dim = partition_dim(name)
        if dim is None:
            info["tp_replicated_parameter_patterns"].append(pattern)
        elif name.endswith(_GATED):
            info["parameter_with_2_sub_params_cat_dim_0"].append(pattern)
        elif dim == 1:
            info["parameter_with_row_parallelism_patterns"].append(pattern)
        # Column-parallel parameters need no pattern: dim 0 is the converter's default.
    return {k: v for k, v in info.items() if v}
