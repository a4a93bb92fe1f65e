"""Full fp32 weights from DeepSpeed's ZeRO-partitioned optimizer states.

The same reconstruction as DeepSpeed's zero_to_fp32 (checked against it in the tests),
written here so that checkpoints are read with torch.load(weights_only=True):
- ZeRO 1/2 (and the bf16 optimizer): each param group is one flat fp32 vector, split into
  equal contiguous parts across data-parallel ranks; the concatenated vector holds the
  group's parameters in `param_shapes` order, each followed by its alignment padding.
- ZeRO 3: every parameter is split on its own into ceil(numel / ranks) elements per rank
  (the last rank padded); each rank's flat vector holds its parts in `param_shapes` order.
Parameters come back lazily (checkpoint/read/lazy_tensors.py): each one is read out of the
partitions (memory-mapped) when it is asked for, no flat vector is ever concatenated, and a
parameter inside one partition is a view of it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from modtrain.checkpoint.read.lazy_tensors import LazyTensors
from modtrain.errors import ModtrainError

OPTIMIZER_STATE = "optimizer_state_dict"


def _numel(shape: Any) -> int:
    return math.prod(shape)


def _check_frozen(model_state: dict[str, Any]) -> None:
    if model_state.get("frozen_param_shapes"):
        raise ModtrainError(
            "this checkpoint has frozen parameters, which modtrain never creates; convert it "
            "with DeepSpeed's zero_to_fp32.py instead"
        )


def _span(parts: list[torch.Tensor], start: int, n: int) -> torch.Tensor:
    """Elements [start, start + n) of the concatenation of `parts`, without concatenating
    them: a view where the span lies inside one part, else a copy of the span only."""
    pieces, pos = [], 0
    for part in parts:
        lo, hi = max(start, pos), min(start + n, pos + part.numel())
        if lo < hi:
            pieces.append(part[lo - pos : hi - pos])
        pos += part.numel()
    if not pieces:
        return parts[0][:0]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def merge_zero12(model_state: dict[str, Any], optim_states: list[dict[str, Any]],
                 skip: Callable[[str], bool] = lambda name: False) -> LazyTensors:
    """`skip`: a name whose whole group is left out (experts: partitioned over their own
    expert data-parallel group, read from their own files)."""
    _check_frozen(model_state)
    first = optim_states[0][OPTIMIZER_STATE]
    paddings = first.get("param_alignment_paddings")
    out = LazyTensors()
    for g, shapes in enumerate(model_state["param_shapes"]):
        if any(skip(name) for name in shapes):
            continue
        parts = [s[OPTIMIZER_STATE]["single_partition_of_fp32_groups"][g]
                 for s in optim_states]
        total = sum(part.numel() for part in parts)
        offset = 0
        for p, (name, shape) in enumerate(shapes.items()):
            n = _numel(shape)
            if offset + n > total:
                raise ModtrainError(f"ZeRO group {g} is shorter than its parameters; the "
                                    "checkpoint is incomplete or was written differently")
            out.add(name, tuple(shape), partial(_view_of_span, parts, offset, n, tuple(shape)))
            offset += n + (paddings[g][p] if paddings else 0)
        # Only the group's padding to a multiple of 2 x ranks may be left (DeepSpeed's check).
        align = 2 * len(optim_states)
        if math.ceil(offset / align) != math.ceil(total / align):
            raise ModtrainError(f"ZeRO group {g} holds {total} elements but its "
                                f"parameters need {offset}; the checkpoint does not match")
    return out


def _view_of_span(parts: Any, offset: int, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """A ZeRO-1/2 parameter: elements offset..offset+n of its group's partitions."""
    return _span(parts, offset, n).view(shape)


def _joined_parts(flats: list[Any], offset: int, part: int, n: int,
                  shape: tuple[int, ...]) -> torch.Tensor:
    """A ZeRO-3 parameter: its piece on each rank, joined and cut to its n elements."""
    return torch.cat([_span(f, offset, part) for f in flats])[:n].view(shape)


def merge_zero3(model_state: dict[str, Any], optim_states: list[dict[str, Any]]
                ) -> LazyTensors:
    _check_frozen(model_state)
    ranks = len(optim_states)
    flats = [list(s[OPTIMIZER_STATE]["fp32_flat_groups"]) for s in optim_states]
    shapes = {k: v for group in model_state["param_shapes"] for k, v in group.items()}
    out = LazyTensors()
    offset = 0
    for name, shape in shapes.items():
        n = _numel(shape)
        part = math.ceil(n / ranks)
        out.add(name, tuple(shape), partial(_joined_parts, flats, offset, part, n, tuple(shape)))
        offset += part
    per_rank = sum(t.numel() for t in flats[0])
    if offset != per_rank:
        raise ModtrainError(f"ZeRO-3 partitions hold {per_rank} elements per rank but "
                            f"the parameters need {offset}; the checkpoint does not match")
    return out


def add_shared(model_state: dict[str, Any], tensors: LazyTensors) -> None:
    """Parameters DeepSpeed saved once under another name."""
    for name, source in (model_state.get("shared_params") or {}).items():
        if source in tensors:
            tensors.alias(name, source)
