"""torch.load(weights_only=True) for DeepSpeed checkpoint files: no pickled code runs.

DeepSpeed's optimizer states pickle a few of its own small objects (the loss scaler, the
ZeRO stage enum, fragment addresses). Instead of allowing DeepSpeed's classes, their names
are mapped to inert stand-ins that only hold the pickled fields: nothing from DeepSpeed is
imported or executed, and any other object in a file is refused.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from modtrain.errors import ModtrainError


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


STAND_INS: list[tuple[Any, str]] = [
    (LossScaler, "deepspeed.runtime.fp16.loss_scaler.LossScaler"),
    (DynamicLossScaler, "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler"),
    (FragmentAddress, "deepspeed.utils.tensor_fragment.fragment_address"),
    (_zero_stage, "deepspeed.runtime.zero.config.ZeroStageEnum"),
]


def load_weights_only(path: str | Path) -> dict[str, Any]:
    """Load one checkpoint file with torch.load(weights_only=True) and the stand-ins above."""
    try:
        with torch.serialization.safe_globals(STAND_INS):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        detail = str(e).split("Unsupported global: ")[-1].split(" was not")[0].strip()
        raise ModtrainError(
            f"{path} holds a Python object that modtrain will not unpickle ({detail[:200]}); "
            "only tensors, containers and DeepSpeed's loss scaler / ZeRO metadata are read"
        ) from None
    except (RuntimeError, OSError, EOFError) as e:
        raise ModtrainError(f"{path} cannot be read as a torch checkpoint ({e}); "
                            "is the checkpoint complete?") from None
