"""Rotary position frequencies in megatron-core's layout.

megatron-core's `RotaryEmbedding` moves its table to CUDA unconditionally, so the
table is built here; megatron's attention applies it (unfused path), which broadcasts
a per-row table of shape [S, B, 1, D]. That is what lets a routed block give each
selected token its original absolute position.
"""

from __future__ import annotations

import torch


def rope_frequencies(seq_length: int, head_dim: int, base: float) -> torch.Tensor:
    """Angles for positions 0..seq_length-1 as [S, 1, 1, head_dim] (non-interleaved)."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(seq_length, dtype=torch.float32), inv_freq)
    return torch.cat((angles, angles), dim=-1)[:, None, None, :]


def gather_positions(freqs: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-row angles of selected tokens: freqs [S,1,1,D], index [k,B] -> [k,B,1,D]."""
    return freqs[:, 0, 0, :][index].unsqueeze(2)
