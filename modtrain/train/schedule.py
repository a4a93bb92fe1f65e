"""The learning-rate schedule: lr(step) for every train.schedule, one pure function."""

from __future__ import annotations

import math

from modtrain.config.schema import TrainConfig
from modtrain.errors import ModtrainError

# The rate left of the peak at decay progress p in [0, 1] (1 at p=0, 0 at p=1).
DECAY_SHAPES = {
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    # Hägele et al. 2024 (arXiv 2405.18392): the best cooldown of those they compared.
    "1-sqrt": lambda p: 1.0 - math.sqrt(p),
}


def decay_start(train: TrainConfig) -> int | None:
    """The first step of the decay to train.min_lr; None for a constant schedule."""
    if train.schedule == "constant":
        return None
    return train.wsd_decay_start if train.schedule == "wsd" else train.warmup_steps


def _multiplier(step: int, train: TrainConfig) -> float:
    """lr(step) / train.lr, as the scheduler's LambdaLR multiplies it."""
    if step < train.warmup_steps:
        return train.lr * (step + 1) / (train.warmup_steps + 1) / train.lr
    start = decay_start(train)
    if start is None or step < start:
        return 1.0
    shape = DECAY_SHAPES["cosine" if train.schedule == "cosine" else
                         "linear" if train.schedule == "linear" else train.decay_shape]
    progress = min(1.0, (step - start) / max(1, train.schedule_end - start))
    return (train.min_lr + shape(progress) * (train.lr - train.min_lr)) / train.lr


def lr_at(step: int, train: TrainConfig) -> float:
    """The learning rate of the update after `step` updates (0-based): linear warm-up to
    train.lr over train.warmup_steps, then

    - cosine: cosine decay to train.min_lr at the schedule's end;
    - linear: linear decay to train.min_lr at the schedule's end;
    - constant: train.lr to the end;
    - wsd: train.lr until the decay start, then train.decay_shape to train.min_lr at the end.

    Past the end it stays at train.min_lr (train.lr for constant). Computed as train.lr times
    the multiplier the optimizer's LambdaLR applies, so the logged rate, the rate restored
    on resume and the rate of an uninterrupted run are the same float.
    """
    return train.lr * _multiplier(step, train)


def lr_multiplier(train: TrainConfig):
    """The function of the step that torch's LambdaLR multiplies train.lr by."""
    return lambda step: _multiplier(step, train)


def check_continues(saved: TrainConfig, train: TrainConfig, step: int) -> None:
    """Refuse a resume whose schedule differs from the checkpoint's over the `step` updates
    already made, when a schedule key changed: only what lies ahead (the decay's start and
    end, the schedule past `step`) may change, as for an anneal branch from the stable
    phase. train.steps and train.decay_steps may change freely, as before this check (a run
    extended, cut short, or trained in segments toward a set decay end)."""
    keys = [k for k in ("schedule", "lr", "min_lr", "warmup_steps", "decay_start",
                        "decay_fraction", "decay_shape")
            if getattr(saved, k) != getattr(train, k)]
    if not keys:  # train.steps / decay_steps alone recompute the schedule, as always
        return
    for s in range(step):
        if lr_at(s, saved) != lr_at(s, train):
            changed = ", ".join(f"train.{k}={getattr(saved, k)!r} -> {getattr(train, k)!r}"
                                for k in keys)
            raise ModtrainError(
                f"the checkpoint of step {step} was trained with another learning-rate "
                f"schedule (step {s}: {lr_at(s, saved):.6g} there, {lr_at(s, train):.6g} "
                f"now; {changed}); keep those keys as they were, or start a decay at or "
                f"after step {step} (train.decay_start>={step})"
            )
