"""Every collective on training metadata: step summaries, evaluation sums, checkpoint lists.

The one module in `train/` and `parallel/` that calls torch.distributed collectives
(tests/test_architecture.py holds the others to it). Each tensor is built on the device it
is given, the topology's: a group made with the single backend "nccl" has no CPU backend,
and a CPU tensor handed to it raises at the first logged step, which gloo tests cannot see.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank(group: Any = None) -> int:
    return dist.get_rank(group) if dist.is_initialized() else 0


def size(group: Any = None) -> int:
    return dist.get_world_size(group) if dist.is_initialized() else 1


@dataclass(frozen=True)
class StepSummary:
    """What every rank agrees on after a step's last backward, read in one host transfer."""

    any_nonfinite: bool  # some rank's loss was not finite
    any_stop: bool  # some rank received a stop signal
    means: dict[str, float]  # mean over data-parallel replicas of each value


def summarize_step(flags: Sequence[torch.Tensor | bool], values: dict[str, torch.Tensor],
                   device: torch.device, share: int = 1) -> StepSummary:
    """One SUM all-reduce over every rank of [flags..., values...], then one read.

    `flags` (nonfinite, stop) count as set when any rank set them. Each value is a 0-d
    tensor; every rank holds one (tensor-parallel ranks copies of their replica's), or, with
    `share` = s, one rank in s does and the others hold 0 (a statistic of one pipeline stage
    out of s). The world sum times s / world is then the mean over data-parallel replicas.
    """
    keys = sorted(values)
    parts = [torch.as_tensor(f, dtype=torch.float64, device=device).reshape(1) for f in flags]
    parts += [values[k].detach().to(device=device, dtype=torch.float64).reshape(1) for k in keys]
    vec = torch.cat(parts)
    world = _world()
    if world > 1:
        dist.all_reduce(vec)
    flat = vec.tolist()  # the step's one host read
    n = len(flags)
    scale = share / world
    return StepSummary(flat[0] > 0, flat[1] > 0 if n > 1 else False,
                       {k: v * scale for k, v in zip(keys, flat[n:])})


def sum_in_place(tensor: torch.Tensor, group: Any = None) -> torch.Tensor:
    """SUM all-reduce of a tensor already on its device (gradient norms), over `group`."""
    if size(group) > 1:
        dist.all_reduce(tensor, group=group)
    return tensor


def mean_over(values: dict[str, float], group: Any, device: torch.device) -> dict[str, float]:
    """Mean of each value over `group`'s ranks (one all-reduce, one read)."""
    if not values:
        return {}
    keys = sorted(values)
    vec = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    n = size(group)
    if n > 1:
        dist.all_reduce(vec, group=group)
    return dict(zip(keys, (vec / n).tolist()))


def ratios_of_sums(numerators: torch.Tensor, denominators: Sequence[float], group: Any,
                   device: torch.device) -> list[float]:
    """sum(numerators[i]) / sum(denominators[i]) over `group` for each i, in one all-reduce
    and one read (evaluation per source); nan where no rank counted anything."""
    n = len(denominators)
    vec = torch.cat([numerators.detach().to(device=device, dtype=torch.float64).reshape(n),
                     torch.tensor([float(d) for d in denominators], dtype=torch.float64,
                                  device=device)])
    if size(group) > 1:
        dist.all_reduce(vec, group=group)
    flat = vec.tolist()
    return [t / c if c else float("nan") for t, c in zip(flat[:n], flat[n:])]


def max_over(value: int, device: torch.device, group: Any = None) -> int:
    """The largest `value` over `group` (e.g. an equal number of evaluation batches)."""
    if size(group) == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return int(t.tolist()[0])


def barrier() -> None:
    if _world() > 1:
        dist.barrier()


def gather_objects(obj: T) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank (picklable metadata only)."""
    if _world() == 1:
        return [obj]
    parts: list[Any] = [None] * _world()
    dist.all_gather_object(parts, obj)
    return parts


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank `src`'s `obj` on every rank."""
    if _world() == 1:
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
