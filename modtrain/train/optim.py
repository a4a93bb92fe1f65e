"""AdamW with decoupled weight decay on matrices only, and the LR schedule."""

from __future__ import annotations

import math

import torch

from modtrain.config.schema import TrainConfig


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


def build_optimizer(model: torch.nn.Module, train: TrainConfig) -> GuardedAdamW:
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return GuardedAdamW(
        groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps, foreach=False
    )


def lr_at(step: int, train: TrainConfig) -> float:
    """Linear warm-up to train.lr, then cosine decay to train.min_lr at train.decay_steps."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / (train.warmup_steps + 1)
    end = train.decay_steps or train.steps
    span = max(1, end - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    return train.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (train.lr - train.min_lr)


def build_scheduler(
    optimizer: torch.optim.Optimizer, train: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_at(step, train) / train.lr)
