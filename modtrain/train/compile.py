"""train.compile: torch.compile (Inductor) of the model's decoder blocks, in place."""

from __future__ import annotations

from torch import nn

from modtrain.config import Config
from modtrain.errors import ModtrainError


def check_compile(config: Config) -> None:
    """Refuse what train.compile cannot do, before any work starts."""
    if not config.train.compile:
        return
    if config.parallel.pipeline > 1:
        raise ModtrainError(
            "train.compile=true works with parallel.pipeline=1 only (DeepSpeed's pipeline "
            "engine runs its own layer list); set train.compile=false"
        )
    if config.parallel.tensor > 1:
        raise ModtrainError(
            "train.compile=true is not tested with parallel.tensor>1 (megatron-core's "
            "tensor-parallel regions inside a compiled block); set train.compile=false"
        )
    if config.train.zero_stage == 3:
        raise ModtrainError(
            "train.compile=true does not work with train.zero_stage=3 (ZeRO-3 gathers each "
            "parameter in module hooks, which compiled blocks bypass); use train.zero_stage=2 "
            "or set train.compile=false"
        )


def compile_blocks(model: nn.Module) -> int:
    """Compile each decoder block of `model` in place; returns how many.

    nn.Module.compile keeps the module tree and parameter names, so checkpoints, ZeRO's
    gradient hooks and the parameter table see the same model. Blocks, not the whole GPT:
    its forward collects per-layer statistics in a dict and checks lengths, which would
    break the graph for nothing."""
    blocks = getattr(model, "blocks", [])
    for block in blocks:
        block.compile()
    return len(blocks)
