"""Analytic forward FLOPs per layer: the one source for pipeline balancing (and MFU).

Matmuls count 2 FLOPs per multiply-add. For a sequence of T tokens, width d, SwiGLU
width f, vocabulary V:
  dense block   T(8d^2 + 6df) + 2T^2 d      (QKV + output projection, 3 MLP matmuls,
                                             causal attention scores and values)
  routed block  the dense block at cT tokens, plus the router's 2Td and, when the causal
                predictor is on, its MLP on every token: 2T(dh + h) for hidden width h
  head          2TdV
  expert block  the attention part, the gate's 2Td(E+N), and E buffers of C slots through
                a SwiGLU expert of width f_e: 6 d f_e E C, with C ~ k T cf / (E+N) per
                expert (model.moe; padding slots are computed too, no-op experts cost 0)
A routed layer at capacity c therefore costs about c (linear part) and c^2 (attention
part) of a dense one. Attention counts the causal half of the score matrix (what flash
kernels compute); the matmul terms equal torch's FlopCounterMode exactly
(tests/model/test_flops.py).
"""

from __future__ import annotations

from modtrain.config.schema import ModelConfig, tokens_per_row


def block_flops(config: ModelConfig, tokens: int, experts: bool = False) -> float:
    """A decoder block over `tokens` tokens; `experts`: its MLP is model.moe's."""
    d, f = config.hidden_size, config.ffn_size
    attention = tokens * 8 * d * d + 2 * tokens * tokens * d
    if not experts:
        return attention + tokens * 6 * d * f
    moe = config.moe
    total = moe.num_experts + moe.noop_experts
    slots = moe.num_experts * moe.top_k * tokens * moe.capacity_factor / total
    return attention + 2 * tokens * d * total + 6 * d * config.expert_ffn_size * slots


def routed_block_flops(config: ModelConfig, tokens: int, experts: bool = False) -> float:
    k = tokens_per_row(config.mod.capacity, tokens)  # the router's own k, never re-derived
    router = 2 * tokens * config.hidden_size
    if config.mod.predictor:
        h = config.mod.predictor_hidden
        router += 2 * tokens * (config.hidden_size * h + h)
    return block_flops(config, k, experts) + router


def head_flops(config: ModelConfig, tokens: int) -> float:
    return 2 * tokens * config.hidden_size * config.padded_vocab_size


def layer_flops(config: ModelConfig, tokens: int) -> list[float]:
    """Forward FLOPs of each decoder block, in order (per sequence of `tokens`)."""
    routed, experts = set(config.routed_layer_ids), set(config.moe_layer_ids)
    return [(routed_block_flops if i in routed else block_flops)(config, tokens, i in experts)
            for i in range(config.num_layers)]


def model_flops(config: ModelConfig, tokens: int) -> float:
    """Forward FLOPs of the whole model for one sequence (x3 for forward + backward)."""
    return sum(layer_flops(config, tokens)) + head_flops(config, tokens)


def training_flops_per_token(config: ModelConfig, seq_length: int) -> float:
    """Forward + backward FLOPs per trained token (backward = 2x forward), routing included:
    the numerator of MFU."""
    return 3 * model_flops(config, seq_length) / seq_length
