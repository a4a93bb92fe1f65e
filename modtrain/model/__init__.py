"""The model: megatron-core decoder layers with Mixture-of-Depths routing."""

from modtrain.model.gpt import GPT, GPTOutput

__all__ = ["GPT", "GPTOutput"]
