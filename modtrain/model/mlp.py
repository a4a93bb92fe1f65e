"""The dense SwiGLU MLP through megatron-core's MLP modules.

megatron-core's MLP.forward adds `glu_linear_offset` (0 here) to the linear half of the
gated unit, one more elementwise pass over the [S, B, ffn] activations forward and
backward; `swiglu` runs the same fc1 / fc2 modules (tensor-parallel as built) without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.mlp import MLP


def is_plain_swiglu(mlp: torch.nn.Module) -> bool:
    """A megatron-core MLP that computes silu(gate) * value with nothing added or clamped."""
    if type(mlp) is not MLP:
        return False
    config = mlp.config
    return (config.gated_linear_unit and config.activation_func is F.silu
            and not config.glu_linear_offset and config.activation_func_clamp_value is None
            and not config.bias_activation_fusion and not config.add_bias_linear)


def swiglu(mlp: MLP, hidden: torch.Tensor) -> torch.Tensor:
    """fc2(silu(gate) * value) with [gate, value] = fc1(hidden); [S, B, H] in and out."""
    up, _ = mlp.linear_fc1(hidden)
    gate, value = up.chunk(2, dim=-1)
    out, _ = mlp.linear_fc2(F.silu(gate) * value)
    return out
