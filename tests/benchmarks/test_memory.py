"""benchmarks/memory.py: its counts order the modes as the memory settings promise."""

from __future__ import annotations

import torch

from tests.tools import load_benchmark


def test_chunked_loss_and_recompute_each_keep_less(dist):
    bench = load_benchmark("memory")
    config = bench.model_config(mod=True, seq=128, width=32)
    tokens = torch.randint(0, bench.VOCAB, (1, 129), generator=torch.Generator().manual_seed(0))
    kept = {mode: bench.saved_bytes(bench.build(config, mode), tokens) for mode in bench.MODES}
    logits = 128 * config.padded_vocab_size * 4
    # The chunked loss keeps the fp32 head-weight and the hidden-state gradients instead.
    instead = 4 * (config.padded_vocab_size + 128) * config.hidden_size
    assert kept["none"] - kept["none + chunked loss"] >= logits - instead
    assert kept["full"] < kept["selective"] < kept["none"]
    assert kept["selective + chunked loss"] < kept["none + chunked loss"]
    assert kept["full + chunked loss"] < min(kept["full"], kept["none + chunked loss"])


def test_block_table_routed_block_keeps_and_costs_less_than_dense(dist):
    bench = load_benchmark("memory")
    (header, row) = bench.block_table([256], width=32, steps=1)
    cells = dict(zip(header.split(" | "), row.split(" | "), strict=True))
    # capacity 0.125: the routed block keeps its input, the router's and predictor's
    # activations over every token and the block's over k = S/8 tokens.
    assert 0.05 < float(cells["bytes routed/dense"]) < 0.5, cells
    assert float(cells["FLOPs routed/dense"]) < 0.25, cells
