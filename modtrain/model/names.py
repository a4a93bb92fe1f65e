"""Parameter names of the pipeline layers mapped onto `GPT`'s (no heavy imports: the
checkpoint reader uses it)."""

from __future__ import annotations


def gpt_name(pipeline_name: str, num_layers: int) -> str:
    """Map a pipeline-module parameter name onto the equivalent `GPT` parameter name."""
    if pipeline_name.startswith("tied_modules.embed."):
        return pipeline_name.removeprefix("tied_modules.embed.")
    index, rest = pipeline_name.split(".", 1)
    index = int(index)
    if index == 0:
        return rest
    if index <= num_layers:
        return f"blocks.{index - 1}.{rest.removeprefix('block.')}"
    return rest  # final_norm.weight, output_layer.weight
