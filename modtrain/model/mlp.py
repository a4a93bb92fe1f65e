"""The dense SwiGLU MLP through megatron-core's MLP modules.

megatron-core's MLP.forward adds `glu_linear_offset` (0 here) to the linear half of the
gated unit, one more elementwise pass over the [S, B, ffn] activations forward and
backward; `swiglu` runs the same fc1 / fc2 modules (tensor-parallel as built) without it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.mlp import MLP

from modtrain.model.recompute import recomputed


def is_plain_swiglu(mlp: torch.nn.Module) -> bool:
    """A megatron-core MLP that computes silu(gate) * value with nothing added or clamped."""
    if type(mlp) is not MLP:
        return False
    config = mlp.config
    return (config.gated_linear_unit and config.activation_func is F.silu
            and not config.glu_linear_offset and config.activation_func_clamp_value is None
            and not config.bias_activation_fusion and not config.add_bias_linear)


def gated(gate: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * value


def swiglu_activation(up: torch.Tensor, recompute: bool = False) -> torch.Tensor:
    """silu(gate) * value of up = [gate, value]; `recompute`: keep only `up` (fc1's output)
    and rerun the activation in backward."""
    gate, value = up.chunk(2, dim=-1)
    return recomputed(recompute, gated, gate, value)


def swiglu(mlp: MLP, hidden: torch.Tensor, recompute_activation: bool = False) -> torch.Tensor:
    """fc2(silu(gate) * value) with [gate, value] = fc1(hidden); [S, B, H] in and out."""
    up, _ = mlp.linear_fc1(hidden)
    out, _ = mlp.linear_fc2(swiglu_activation(up, recompute_activation))
    return out
