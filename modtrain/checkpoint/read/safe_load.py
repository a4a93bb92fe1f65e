"""torch.load(weights_only=True) for DeepSpeed checkpoint files: no pickled code runs.

DeepSpeed's optimizer states pickle a few of its own small objects (the loss scaler, the
ZeRO stage enum, fragment addresses). Instead of allowing DeepSpeed's classes, their names
are mapped to inert stand-ins that only hold the pickled fields: nothing from DeepSpeed is
imported or executed, and any other object in a file is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modtrain.checkpoint.files import restricted_load
from modtrain.checkpoint.format import DEEPSPEED_GLOBALS


class PickledObject:
    """Stand-in for an allow-listed DeepSpeed object: keeps its pickled state, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


class LossScaler(PickledObject):
    pass


class DynamicLossScaler(PickledObject):
    pass


class FragmentAddress(PickledObject):
    pass


def _zero_stage(value: int) -> int:
    """ZeroStageEnum is an int enum, pickled as ZeroStageEnum(value): keep the int."""
    return int(value)


_STAND_IN_FOR: dict[str, Any] = {
    "LossScaler": LossScaler,
    "DynamicLossScaler": DynamicLossScaler,
    "fragment_address": FragmentAddress,
    "ZeroStageEnum": _zero_stage,
}
# One stand-in per allow-listed name (a name without one fails here, at import).
STAND_INS: list[tuple[Any, str]] = [(_STAND_IN_FOR[name.rpartition(".")[2]], name)
                                    for name in DEEPSPEED_GLOBALS]


def load_weights_only(path: str | Path) -> dict[str, Any]:
    """Load one checkpoint file with torch.load(weights_only=True) and the stand-ins above."""
    return restricted_load(path, STAND_INS, map_location="cpu", mmap=True)
