"""Activation recomputation: the one wrapper that reruns a block's computation in backward."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch.utils.checkpoint import checkpoint

T = TypeVar("T")


def recomputed(enabled: bool, fn: Callable[..., T], *args) -> T:
    """fn(*args); when `enabled` and gradients are on, its activations are not kept but
    recomputed in backward (torch's non-reentrant checkpoint, which replays the RNG state,
    so dropout masks are the same, and checks that the recomputation saves the same
    tensors)."""
    if not (enabled and torch.is_grad_enabled()):
        return fn(*args)
    return checkpoint(fn, *args, use_reentrant=False)
