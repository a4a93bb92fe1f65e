import pytest

from modtrain.config import load_config
from modtrain.model.flops import block_flops, layer_flops, routed_block_flops


def test_routed_layer_costs_about_c_and_c_squared_of_dense():
    config = load_config(None, ["model.mod.enabled=true", "model.mod.capacity=0.125",
                                "model.hidden_size=1024", "model.num_heads=8",
                                "model.max_seq_length=2048", "data.seq_length=2048"])
    t, d = 2048, 1024
    dense, routed = block_flops(config.model, t), routed_block_flops(config.model, t)
    linear = t * (8 * d * d + 6 * d * config.model.ffn_size)
    attention = 2 * t * t * d
    assert dense == linear + attention
    assert routed == pytest.approx(0.125 * linear + 0.125**2 * attention + 2 * t * d)


def test_every_other_block_is_routed_by_default():
    config = load_config(None, ["model.mod.enabled=true", "model.num_layers=4"])
    costs = layer_flops(config.model, 64)
    assert costs[0] == costs[2] > costs[1] == costs[3]
