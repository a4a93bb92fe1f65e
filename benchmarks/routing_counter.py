"""Count the causal routing decisions an inference model makes (for benchmarks and reports)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def count_causal_decisions(model: nn.Module) -> tuple[list[int], Callable[[], None]]:
    """Wrap every router's causal decision; returns live [routed, total] counts and a
    function that puts the original decisions back."""
    counts: list[int] = [0, 0]
    restore = []
    for layer in model.model.layers:
        if layer.router is None:
            continue
        decide = layer.router.causal_mask
        restore.append((layer.router, decide))

        def counted(x, r, decide=decide):
            mask = decide(x, r)
            counts[0] += int(mask.sum())
            counts[1] += mask.numel()
            return mask

        layer.router.causal_mask = counted

    def undo() -> None:
        for router, decide in restore:
            router.causal_mask = decide

    return counts, undo
