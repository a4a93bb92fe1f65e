"""Attention dropout under tensor parallelism: its own mask per TP rank, the rest alike."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import TransformerConfig

from modtrain.model.attention import SDPACoreAttention
from modtrain.model.rng import CPURNGStatesTracker, seed_streams

CPU = torch.device("cpu")


def _attention(tensor: int) -> SDPACoreAttention:
    config = TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=4,
                               tensor_model_parallel_size=tensor, attention_dropout=0.5,
                               use_cpu_initialization=True)
    return SDPACoreAttention(config, 1, None, "self").train()


def _rank_step(rank: int, tensor: int) -> tuple[torch.Tensor, torch.Tensor]:
    """What TP rank `rank` draws: attention over its heads, then a replicated dropout."""
    torch.manual_seed(7)  # the run's seed, alike on every rank
    seed_streams(7, rank, CPU)
    # The same values on both ranks, so only the masks may differ; a TP rank holds
    # 4 / tensor of the 4 heads.
    q = torch.ones(8, 1, 4 // tensor, 4)
    attn = _attention(tensor)(q, q, q, None)
    return attn, F.dropout(torch.ones(64), 0.5)


def test_head_split_dropout_differs_across_tp_ranks_and_replicated_dropout_agrees():
    (attn0, rep0), (attn1, rep1) = _rank_step(0, 2), _rank_step(1, 2)
    assert not torch.equal(attn0, attn1)
    assert torch.equal(rep0, rep1)


def test_one_tp_rank_draws_from_the_default_stream_as_before():
    attn, _ = _rank_step(0, 1)
    torch.manual_seed(7)
    q = torch.ones(1, 4, 8, 4)
    plain = F.scaled_dot_product_attention(q, q, q, dropout_p=0.5, is_causal=True)
    assert torch.equal(attn, plain.permute(2, 0, 1, 3).reshape(8, 1, 16))


def test_fork_leaves_the_default_stream_where_it_was_and_resumes_its_own():
    tracker = CPURNGStatesTracker()
    tracker.add("tp", 3)
    torch.manual_seed(0)
    expected = torch.rand(4)
    torch.manual_seed(0)
    with tracker.fork("tp"):
        first = torch.rand(4)
    assert torch.equal(torch.rand(4), expected)
    with tracker.fork("tp"):
        second = torch.rand(4)
    torch.manual_seed(3)
    assert torch.equal(torch.cat([first, second]), torch.rand(8))
