"""Parameter names of the pipeline layers mapped onto `GPT`'s and back (no heavy imports:
the checkpoint reader and the universal-checkpoint converter use it).

Pipeline layers are numbered globally, whatever the number of stages: 0 the embedding
(`tied_modules.embed` when the output projection shares it), 1..L the blocks, L+1 the final
norm, L+2 the output projection. So one pipeline name means the same parameter at every
pipeline size, and only pipeline <-> no-pipeline needs renaming.
"""

from __future__ import annotations

TIED_PREFIX = "tied_modules.embed."


def gpt_name(pipeline_name: str, num_layers: int) -> str:
    """Map a pipeline-module parameter name onto the equivalent `GPT` parameter name."""
    if pipeline_name.startswith(TIED_PREFIX):
        return pipeline_name.removeprefix(TIED_PREFIX)
    index, rest = pipeline_name.split(".", 1)
    index = int(index)
    if index == 0:
        return rest
    if index <= num_layers:
        return f"blocks.{index - 1}.{rest.removeprefix('block.')}"
    return rest  # final_norm.weight, output_layer.weight


def pipeline_name(name: str, num_layers: int, tie_embeddings: bool) -> str:
    """Map a `GPT` parameter name onto the pipeline module's (the inverse of `gpt_name`)."""
    head, _, rest = name.partition(".")
    if head == "embedding":
        return (TIED_PREFIX if tie_embeddings else "0.") + name
    if head == "blocks":
        index, _, inner = rest.partition(".")
        return f"{int(index) + 1}.block.{inner}"
    if head == "final_norm":
        return f"{num_layers + 1}.{name}"
    if head == "output_layer":
        return f"{num_layers + 2}.{name}"
    raise ValueError(f"{name} is not a GPT parameter name")
