"""Rotary position embeddings: a cos/sin table built once, applied to [S, B, heads, D].

megatron-core's unfused RoPE recomputes cos and sin of the angle table for q and for k in
every layer and concatenates an empty pass-through part; its fused kernels need CUDA. The
table here is computed once per model (fp32, cast to the activations' dtype when applied)
and gives the same values. A routed block gathers per-row rows of it ([k, B, 1, D]), so
each selected token keeps its original position (absolute, or within its document when
data.reset_positions gathers the table per token).

RoPE scaling (model.rope_scaling) changes the angles only: `linear` divides the inverse
frequencies by the factor (position interpolation, as Hugging Face's "linear" rope type
computes it), `ntk` raises the base to base * factor^(D/(D-2)) (NTK-aware, static).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from modtrain.config.schema import RopeScalingConfig


def scaled_rope(base: float, head_dim: int, scaling: RopeScalingConfig) -> tuple[float, float]:
    """(base, inverse-frequency divisor) under `scaling`; the export writes the same two."""
    if scaling.type == "linear":
        return base, scaling.factor
    if scaling.type == "ntk":
        return base * scaling.factor ** (head_dim / (head_dim - 2)), 1.0
    return base, 1.0


def rope_frequencies(seq_length: int, head_dim: int, base: float,
                     divisor: float = 1.0) -> torch.Tensor:
    """Angles for positions 0..seq_length-1 as [S, 1, 1, head_dim] (non-interleaved)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    if divisor != 1.0:
        inv_freq /= divisor  # in fp32 after the powers, as transformers' "linear" does
    angles = torch.outer(torch.arange(seq_length, dtype=torch.float32), inv_freq)
    return torch.cat((angles, angles), dim=-1)[:, None, None, :]


class Rope(NamedTuple):
    """cos of the angles and the sine with the rotation's sign folded in ([-sin, +sin] over
    the two halves of the head), [S, 1, 1, D] for a whole sequence or [k, B, 1, D] per row."""

    cos: torch.Tensor
    signed_sin: torch.Tensor

    @classmethod
    def table(cls, seq_length: int, head_dim: int, base: float,
              scaling: RopeScalingConfig | None = None) -> Rope:
        base, divisor = scaled_rope(base, head_dim, scaling or RopeScalingConfig())
        angles = rope_frequencies(seq_length, head_dim, base, divisor)
        sin = angles.sin()
        sign = torch.ones(head_dim)
        sign[: head_dim // 2] = -1.0
        return cls(angles.cos(), sin * sign)

    def to(self, device: torch.device) -> Rope:
        return Rope(self.cos.to(device), self.signed_sin.to(device))

    def window(self, start: int, length: int) -> Rope:
        """Positions start..start+length-1."""
        return Rope(self.cos[start : start + length], self.signed_sin[start : start + length])

    def gather(self, index: torch.Tensor) -> Rope:
        """Per-row entries of selected tokens: index [k, B] -> [k, B, 1, D]. The table may be
        shared by the rows ([S, 1, 1, D]) or per row ([S, B, 1, D], positions per token)."""
        where = index[:, :, None, None].expand(-1, -1, 1, self.cos.shape[-1])
        batch = index.shape[1]
        return Rope(self.cos.expand(-1, batch, -1, -1).gather(0, where),
                    self.signed_sin.expand(-1, batch, -1, -1).gather(0, where))

    def row(self, b: int) -> Rope:
        """The table of row b alone (the same table if shared by the rows)."""
        if self.cos.shape[1] == 1:
            return self
        return Rope(self.cos[:, b : b + 1], self.signed_sin[:, b : b + 1])

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Rotate x [S, B, heads, D] by its positions' angles (rotate-half convention):
        x cos + [-x2, x1] sin, with [-x2, x1] sin = roll(x, D/2) [-sin, sin]. One roll in
        place of split, negate and concatenate, forward and backward; the same values bit
        for bit (a negation is exact)."""
        rolled = torch.roll(x, x.shape[-1] // 2, dims=-1)
        return x * self.cos.to(x.dtype) + rolled * self.signed_sin.to(x.dtype)
