"""Counts what autograd saves for backward: each storage once, the model's weights left out."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def saved_bytes(model: torch.nn.Module) -> Iterator[dict[int, int]]:
    """Within it, the {storage: bytes} of every tensor autograd saves that is not one of
    `model`'s parameters; sum its values after the block."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield seen
