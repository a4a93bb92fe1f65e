"""Activation recomputation: the one wrapper that reruns part of a block in backward."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch
from torch.utils.checkpoint import checkpoint

from modtrain.model.rng import rng_tracker

T = TypeVar("T")

# train.recompute: none keeps every activation; selective keeps the matmul outputs and
# reruns attention's core (RoPE, softmax) and the MLP activation; full keeps the block input.
MODES = ("none", "selective", "full")


def _tensor_parallel_replay(device: torch.device
                            ) -> tuple[contextlib.AbstractContextManager,
                                       contextlib.AbstractContextManager]:
    """checkpoint's context_fn: the rerun starts the tensor-parallel RNG stream where the
    forward started it (checkpoint itself replays only the default stream)."""
    tracker = rng_tracker(device)
    if not tracker.is_initialized():
        return contextlib.nullcontext(), contextlib.nullcontext()
    states = tracker.get_states()

    @contextlib.contextmanager
    def replay() -> Iterator[None]:
        after = tracker.get_states()
        tracker.set_states(states)
        try:
            yield
        finally:
            tracker.set_states(after)

    return contextlib.nullcontext(), replay()


def recomputed(enabled: bool, fn: Callable[..., T], *args) -> T:
    """fn(*args); when `enabled` and gradients are on, its activations are not kept but
    recomputed in backward (torch's non-reentrant checkpoint, which replays the RNG state,
    so dropout masks are the same, and checks that the recomputation saves the same
    tensors; the tensor-parallel stream of model/rng.py is replayed too)."""
    if not (enabled and torch.is_grad_enabled()):
        return fn(*args)
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    return checkpoint(fn, *args, use_reentrant=False,
                      context_fn=lambda: _tensor_parallel_replay(device))
