"""Self-attention through megatron-core's SelfAttention modules, with SDPA at its core.

megatron-core's local DotProductAttention needs a CUDA memory buffer; SDPA runs on CPU
and dispatches to flash / memory-efficient kernels on GPU. `self_attention` runs the
SelfAttention's own tensor-parallel projections and core attention, and applies RoPE from
a precomputed table in between (see model/rope.py); megatron's forward around them adds
inference-context and packed-sequence bookkeeping that modtrain does not use.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from megatron.core.transformer.attention import SelfAttention
from megatron.core.transformer.module import MegatronModule

from modtrain.model.recompute import recomputed
from modtrain.model.rng import tensor_parallel_rng
from modtrain.model.rope import Rope


def _core(core: MegatronModule, rope: Rope, query: torch.Tensor, key: torch.Tensor,
          value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    return core(rope.apply(query), rope.apply(key), value, attention_mask=mask)


def self_attention(attention: SelfAttention, hidden: torch.Tensor, rope: Rope,
                   mask: torch.Tensor | None = None, recompute_core: bool = False
                   ) -> torch.Tensor:
    """Causal self-attention of hidden [S, B, H] at the positions in `rope`; [S, B, H] out.
    `mask` [B, 1, S, S]: True where a query must not attend to a key (model/documents.py).
    `recompute_core`: keep the QKV projection's output and rerun RoPE and the core
    attention in backward (megatron-core's "core_attn" selective recomputation)."""
    query, key, value = attention.get_query_key_value_tensors(hidden, split_qkv=True)
    context = recomputed(recompute_core, _core, attention.core_attention, rope, query, key,
                         value, mask)
    out, _ = attention.linear_proj(context)
    return out


class SDPACoreAttention(MegatronModule):
    """Causal attention over [s, b, heads, head_dim] tensors, output [s, b, heads*head_dim].
    An `attention_mask` ([b, 1, s, s], True: masked out, megatron-core's convention) replaces
    the causal mask; it must itself be causal (model/documents.py builds it so)."""

    def __init__(
        self,
        config,
        layer_number: int,
        attn_mask_type,
        attention_type: str,
        attention_dropout: float | None = None,
        softmax_scale: float | None = None,
        cp_comm_type: str | None = None,
        pg_collection=None,
    ) -> None:
        super().__init__(config=config)
        self.dropout = config.attention_dropout if attention_dropout is None else attention_dropout
        self.softmax_scale = softmax_scale

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        attn_mask_type=None,
        attention_bias=None,
        packed_seq_params=None,
    ) -> torch.Tensor:
        if packed_seq_params is not None or attention_bias is not None:
            raise NotImplementedError("SDPACoreAttention supports plain causal attention only")
        seq, batch, heads, head_dim = query.shape
        if key.shape[2] != heads:  # grouped-query attention: repeat key/value heads
            repeat = heads // key.shape[2]
            key = key.repeat_interleave(repeat, dim=2)
            value = value.repeat_interleave(repeat, dim=2)
        # Causal over the given order: in a routed block the tokens are the selected ones in
        # their original order, so causality by index is causality by original position.
        dropout = self.dropout if self.training else 0.0
        # Fewer heads than the model's: they are split over the tensor-parallel ranks, and
        # each rank draws its own mask (megatron-core's DotProductAttention forks alike).
        split_heads = heads < self.config.num_attention_heads
        # SDPA's boolean mask is the opposite: True where attention takes part.
        allowed = None if attention_mask is None else ~attention_mask
        with (tensor_parallel_rng(query.device) if dropout > 0 and split_heads
              else contextlib.nullcontext()):
            out = F.scaled_dot_product_attention(
                query.permute(1, 2, 0, 3),
                key.permute(1, 2, 0, 3),
                value.permute(1, 2, 0, 3),
                attn_mask=allowed,
                dropout_p=dropout,
                is_causal=allowed is None,
                scale=self.softmax_scale,
            )
        return out.permute(2, 0, 1, 3).reshape(seq, batch, heads * head_dim)
