"""AdamW with decoupled weight decay on matrices only, and the scheduler that applies
train/schedule.py's learning rate to it."""

from __future__ import annotations

from typing import Any

import torch

from modtrain.config.schema import TrainConfig
from modtrain.train.schedule import lr_at, lr_multiplier

__all__ = ["GuardedAdamW", "build_optimizer", "build_scheduler", "lr_at",
           "restore_group_settings", "untie_step_counters"]


class GuardedAdamW(torch.optim.AdamW):
    """AdamW that leaves parameters and moments untouched when `skip_next` is set.

    The trainer sets it on every rank together (after an all-reduce) when any rank saw a
    non-finite loss, so a bad step is skipped whatever DeepSpeed's ZeRO stage does with
    non-finite gradients.
    """

    skip_next = False

    @torch.no_grad()
    def step(self, closure=None):
        if self.skip_next:
            return None
        return super().step(closure)


def _group_settings(train: TrainConfig, groups: int = 2) -> list[dict[str, Any]]:
    """Per parameter group (matrices, vectors, then expert matrices): what the config sets."""
    common = {"betas": (train.beta1, train.beta2), "eps": train.eps}
    decay = {"weight_decay": train.weight_decay, **common}
    return [decay, {"weight_decay": 0.0, **common}, decay][:groups]


def _is_expert(p: torch.nn.Parameter) -> bool:
    """DeepSpeed marks expert parameters: reduced over the expert data-parallel group only."""
    return getattr(p, "allreduce", True) is False


def build_optimizer(model: torch.nn.Module, train: TrainConfig) -> GuardedAdamW:
    """Matrices with weight decay, vectors without; expert matrices (model.moe) in a third
    group that DeepSpeed partitions over their expert data-parallel group."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    experts: list[torch.nn.Parameter] = []
    for _, p in model.named_parameters():
        if p.requires_grad:
            # A ZeRO-3 partitioned parameter (built under deepspeed.zero.Init) is an empty
            # tensor; its shape is `ds_shape`.
            matrix = len(getattr(p, "ds_shape", p.shape)) >= 2
            (experts if _is_expert(p) else decay if matrix else no_decay).append(p)
    groups: list[dict[str, Any]] = [{"params": params} for params in (decay, no_decay)]
    if experts:
        names = {p.group_name for p in experts}
        if len(names) != 1:
            raise ValueError(f"expert parameters of several expert-parallel sizes: {names}")
        groups.append({"params": experts, "moe": True, "name": names.pop()})
    for group, settings in zip(groups, _group_settings(train, len(groups)), strict=True):
        group.update(settings)
    try:
        # torch's fused kernel: one pass over each parameter, no Python loop; on a CPU 3-6x
        # the speed of the per-parameter loop that would be the default there
        # (benchmarks/optimizer_step.py).
        return GuardedAdamW(groups, lr=train.lr, fused=True)
    except RuntimeError:  # a device or dtype without the fused kernel
        return GuardedAdamW(groups, lr=train.lr)


def restore_group_settings(optimizer: torch.optim.Optimizer, train: TrainConfig,
                           step: int) -> None:
    """After loading a checkpoint: the config's hyperparameters and this step's learning rate.

    A checkpoint restores optimizer state, not settings: the learning rate follows this
    config's schedule, and DeepSpeed's ZeRO-3 universal loader copies the first group's
    settings onto every group (weight decay on norms and biases) unless they are set again.
    """
    groups = optimizer.param_groups
    for group, settings in zip(groups, _group_settings(train, len(groups)), strict=True):
        group.update(settings, lr=lr_at(step, train))


def untie_step_counters(optimizer: torch.optim.Optimizer) -> None:
    """Give every parameter its own Adam step counter after loading a checkpoint.

    DeepSpeed's ZeRO-3 universal loader puts one step tensor into the state of every
    parameter group; AdamW increments it in place, so with two groups the count would grow
    by two per step and the bias correction of the second group would drift.
    """
    for state in optimizer.state.values():
        if isinstance(state.get("step"), torch.Tensor):
            state["step"] = state["step"].clone()


def build_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    """DeepSpeed steps it after every update; its state (the step count) is checkpointed, so
    a resumed run continues lr_at from the saved step."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(train))
