"""A warning when a routed layer's router or predictor stops telling routed tokens apart.

MoD's router (through its BCE loss) and the causal predictor learn which tokens the top-k
takes. A collapsed one answers the same for every token; its accuracy is then that of the
majority answer, 1 - capacity for capacity < 0.5 (0.875 at 0.125), which looks high. So
the watch compares each layer's accuracy, averaged over a window of steps, with that
baseline, and names the layer once per episode (again after it has recovered).
"""

from __future__ import annotations

from collections import deque

from modtrain.model.router import PREDICTOR_STATS, ROUTER_STATS
from modtrain.train.hook_base import Hook, StepEnd
from modtrain.train.state import Run

ACCURACIES = (ROUTER_STATS[2], PREDICTOR_STATS[1])  # router_acc, predictor_acc


class RoutingCollapseWatch(Hook):
    """Keeps the last `routing_collapse_window` accuracies of every routed layer's router
    and predictor (read once per step with the other statistics)."""

    def __init__(self, capacity: float, window: int, margin: float) -> None:
        self.baseline = max(capacity, 1.0 - capacity)  # always answering the majority
        self.window, self.margin = window, margin
        self.recent: dict[str, deque[float]] = {}
        self.warned: set[str] = set()

    def after_step(self, run: Run, end: StepEnd) -> None:
        for key, value in end.outcome.stats.items():
            if key.split("/")[0] not in ACCURACIES:
                continue
            recent = self.recent.setdefault(key, deque(maxlen=self.window))
            recent.append(value)
            if len(recent) < self.window:
                continue
            mean = sum(recent) / len(recent)
            if mean > self.baseline + self.margin:
                self.warned.discard(key)  # recovered: warn again if it collapses again
            elif key not in self.warned:
                self.warned.add(key)
                run.message(self.warning(end.step, key, mean))

    def warning(self, step: int, key: str, mean: float) -> str:
        what, layer = key.split("/")
        part = "router" if what == ACCURACIES[0] else "predictor"
        return (f"modtrain: warning: step {step}: the {part} of routed {layer} has collapsed: "
                f"its accuracy against the top-k over the last {self.window} steps is "
                f"{mean:.3f}, no better than always answering the majority ({self.baseline:.3f}"
                f" + train.routing_collapse_margin={self.margin}); lower train.lr, raise "
                "model.mod.router_bce_coef / predictor_loss_coef, or check the data")


def routing_watch(run: Run) -> list[Hook]:
    """The watch for a MoD run with train.routing_collapse_window > 0 (else none)."""
    t, mod = run.config.train, run.config.model.mod
    if not mod.enabled or t.routing_collapse_window == 0:
        return []
    return [RoutingCollapseWatch(mod.capacity, t.routing_collapse_window,
                                 t.routing_collapse_margin)]
