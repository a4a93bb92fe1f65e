"""Full fp32 weights from DeepSpeed's ZeRO-partitioned optimizer states.

The same reconstruction as DeepSpeed's zero_to_fp32 (checked against it in the tests),
written here so that checkpoints are read with torch.load(weights_only=True):
- ZeRO 1/2 (and the bf16 optimizer): each param group is one flat fp32 vector, split into
  equal contiguous parts across data-parallel ranks; the concatenated vector holds the
  group's parameters in `param_shapes` order, each followed by its alignment padding.
- ZeRO 3: every parameter is split on its own into ceil(numel / ranks) elements per rank
  (the last rank padded); each rank's flat vector holds its parts in `param_shapes` order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

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


def merge_zero12(model_state: dict[str, Any], optim_states: list[dict[str, Any]],
                 skip: Callable[[str], bool] = lambda name: False) -> dict[str, torch.Tensor]:
    """`skip`: a name whose whole group is left out (experts: partitioned over their own
    expert data-parallel group, read from their own files)."""
    _check_frozen(model_state)
    first = optim_states[0][OPTIMIZER_STATE]
    paddings = first.get("param_alignment_paddings")
    out: dict[str, torch.Tensor] = {}
    for g, shapes in enumerate(model_state["param_shapes"]):
        if any(skip(name) for name in shapes):
            continue
        flat = torch.cat([s[OPTIMIZER_STATE]["single_partition_of_fp32_groups"][g]
                          for s in optim_states])
        offset = 0
        for p, (name, shape) in enumerate(shapes.items()):
            n = _numel(shape)
            if offset + n > flat.numel():
                raise ModtrainError(f"ZeRO group {g} is shorter than its parameters; the "
                                    "checkpoint is incomplete or was written differently")
            out[name] = flat[offset : offset + n].view(tuple(shape)).clone()
            offset += n + (paddings[g][p] if paddings else 0)
        # Only the group's padding to a multiple of 2 x ranks may be left (DeepSpeed's check).
        align = 2 * len(optim_states)
        if math.ceil(offset / align) != math.ceil(flat.numel() / align):
            raise ModtrainError(f"ZeRO group {g} holds {flat.numel()} elements but its "
                                f"parameters need {offset}; the checkpoint does not match")
    return out


def merge_zero3(model_state: dict[str, Any], optim_states: list[dict[str, Any]]
                ) -> dict[str, torch.Tensor]:
    _check_frozen(model_state)
    ranks = len(optim_states)
    flats = [torch.cat(list(s[OPTIMIZER_STATE]["fp32_flat_groups"])) for s in optim_states]
    shapes = {k: v for group in model_state["param_shapes"] for k, v in group.items()}
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, shape in shapes.items():
        n = _numel(shape)
        part = math.ceil(n / ranks)
        pieces = [flat[offset : offset + part] for flat in flats]
        out[name] = torch.cat(pieces)[:n].view(tuple(shape)).clone()
        offset += part
    if offset != flats[0].numel():
        raise ModtrainError(f"ZeRO-3 partitions hold {flats[0].numel()} elements per rank but "
                            f"the parameters need {offset}; the checkpoint does not match")
    return out


def add_shared(model_state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Parameters DeepSpeed saved once under another name."""
    for name, source in (model_state.get("shared_params") or {}).items():
        if source in tensors:
            tensors[name] = tensors[source]
