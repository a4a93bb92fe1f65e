"""The model: megatron-core decoder layers with Mixture-of-Depths routing.

`GPT` loads megatron-core on first use, so the light modules here (the parameter table,
tensor splits, FLOP formulas) import without it: conversion and inference need only them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modtrain.model.gpt import GPT, GPTOutput

__all__ = ["GPT", "GPTOutput"]


def __getattr__(name: str):
    if name in __all__:
        from modtrain.model import gpt

        return getattr(gpt, name)
    raise AttributeError(f"module 'modtrain.model' has no attribute {name!r}")
