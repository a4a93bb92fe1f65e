"""Tensor-parallel shards of GPT parameters, by the split each row of the parameter table
names (megatron-core's layout): shard a full tensor, merge the shards back, and describe
the layout to DeepSpeed's universal-checkpoint converter."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from modtrain.model.param_table import Split, param_kind


@dataclass(frozen=True)
class TensorSlice:
    """This process's part of the tensor-parallel layers: rank `rank` of `size`."""

    rank: int = 0
    size: int = 1


def split_of(name: str) -> Split:
    kind = param_kind(name)
    return Split.REPLICATED if kind is None else kind.split


def partition_dim(name: str) -> int | None:
    """The dimension `name` is split along, or None for a parameter replicated on all ranks."""
    split = split_of(name)
    if split is Split.REPLICATED:
        return None
    return 1 if split is Split.ROW else 0


def shard(full: torch.Tensor, name: str, rank: int, size: int) -> torch.Tensor:
    """This rank's part of a full (TP=1) tensor."""
    dim = partition_dim(name)
    if dim is None or size == 1:
        return full
    if split_of(name) is Split.GATED:
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(size, dim=0)[rank], up.chunk(size, dim=0)[rank]], dim=0)
    return full.chunk(size, dim=dim)[rank].contiguous()


def merge(parts: list[torch.Tensor], name: str) -> torch.Tensor:
    """The full tensor from every rank's part (rank order)."""
    dim = partition_dim(name)
    if dim is None or len(parts) == 1:
        return parts[0]
    if split_of(name) is Split.GATED:
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


_UNIVERSAL_KEYS = {
    Split.REPLICATED: "tp_replicated_parameter_patterns",
    Split.ROW: "parameter_with_row_parallelism_patterns",
    Split.GATED: "parameter_with_2_sub_params_cat_dim_0",
    # Column-parallel parameters need no pattern: dim 0 is the converter's default.
}


def universal_checkpoint_info(names: list[str]) -> dict[str, list[str]]:
    """DeepSpeed universal-checkpoint patterns that describe this layout, one exact pattern
    per parameter (its converter rejects patterns that match nothing)."""
    info: dict[str, list[str]] = {key: [] for key in _UNIVERSAL_KEYS.values()}
    for name in names:
        key = _UNIVERSAL_KEYS.get(split_of(name))
        if key is not None:
            info[key].append("^" + re.escape(name) + "$")
    return {k: v for k, v in info.items() if v}
