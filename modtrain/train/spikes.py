"""Loss-spike detection: a step whose loss (or gradient norm) lies far above the recent ones
is skipped before its update, as OLMo-core's SkipStepOptimizer does.

The decision reads values already reduced over data-parallel ranks (the step's one summary),
so every rank takes it alike, and the rolling window holds only applied steps.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from modtrain.config.schema import TrainConfig


@dataclass(frozen=True)
class Spike:
    key: str  # "loss" or "grad_norm"
    value: float
    zscore: float


class SpikeDetector:
    """z = (x - mean) / std over the last `window` applied steps; x is a spike when z exceeds
    `threshold` (upwards only: a loss that falls fast is no fault). Nothing is judged before
    the window is full."""

    def __init__(self, window: int, threshold: float) -> None:
        self.threshold = threshold
        self.history: dict[str, deque[float]] = {
            key: deque(maxlen=window) for key in ("loss", "grad_norm")}

    def judge(self, values: dict[str, float]) -> Spike | None:
        """The first spike among `values` (None: the step may be applied)."""
        for key, past in self.history.items():
            x = values.get(key)
            if x is None or len(past) < (past.maxlen or 0):
                continue
            mean = math.fsum(past) / len(past)
            std = math.sqrt(math.fsum((v - mean) ** 2 for v in past) / len(past))
            z = (x - mean) / max(std, 1e-12 * max(abs(mean), 1.0))
            if z > self.threshold:
                return Spike(key, x, z)
        return None

    def accept(self, values: dict[str, float]) -> None:
        """Add an applied step's values to the window."""
        for key, past in self.history.items():
            x = values.get(key)
            if x is not None and math.isfinite(x):
                past.append(x)


def build_detector(train: TrainConfig) -> SpikeDetector | None:
    return (SpikeDetector(train.spike_window, train.spike_zscore)
            if train.spike_window > 0 else None)
