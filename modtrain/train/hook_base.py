"""The points of the training loop a hook may act at, and what a finished step hands it."""

from __future__ import annotations

from dataclasses import dataclass

from modtrain.train.state import Run
from modtrain.train.steps import StepOutcome


@dataclass(frozen=True)
class StepEnd:
    """What a finished step hands the hooks."""

    step: int
    lr: float  # the rate this step's update used
    outcome: StepOutcome


class Hook:
    """A concern of the loop; every point is a no-op unless a subclass overrides it."""

    def after_step(self, run: Run, end: StepEnd) -> None: ...

    def after_eval(self, run: Run, step: int, val_loss: float) -> None: ...

    def before_save(self, run: Run, step: int) -> None: ...

    def after_save(self, run: Run, step: int, tag: str) -> None: ...

    def on_stop(self, run: Run) -> None: ...
