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
    h = config.model.mod.predictor_hidden
    predictor = 2 * t * (d * h + h)
    assert routed == pytest.approx(0.125 * linear + 0.125**2 * attention + 2 * t * d + predictor)


def test_every_other_block_is_routed_by_default():
    config = load_config(None, ["model.mod.enabled=true", "model.num_layers=4"])
    costs = layer_flops(config.model, 64)
    assert costs[0] == costs[2] > costs[1] == costs[3]


EXPERTS = ["model.moe.enabled=true", "model.moe.num_experts=4", "model.moe.capacity_factor=1",
           "model.moe.min_capacity=1"]
VARIANTS = {
    "dense": [],
    "mod": ["model.mod.enabled=true"],
    "moe": EXPERTS,
    "mode_staged": ["model.mod.enabled=true", *EXPERTS],
    "mode_integrated": [*EXPERTS, "model.moe.num_experts=2", "model.moe.noop_experts=2"],
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_matmul_flops_equal_torch_flop_counter(dist, variant):
    """The formulas against torch's own count of a real forward pass. On CPU torch's
    FlopCounterMode does not count the SDPA kernel, so the attention term (2T^2 d per
    block, the causal half) is compared by hand: everything else matches exactly. Expert
    capacities divide evenly here (the formula leaves out the ceil), and the count includes
    the buffer slots no token fills: experts compute them too."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from modtrain.model import GPT
    from modtrain.model.flops import model_flops

    seq, batch, d = 128, 2, 64
    config = load_config(None, [
        "model.vocab_size=67", "model.num_layers=4", f"model.hidden_size={d}",
        "model.num_heads=4", f"model.max_seq_length={seq}", f"data.seq_length={seq}",
        "model.mod.capacity=0.25", *VARIANTS[variant]])
    tokens = torch.randint(0, 67, (batch, seq), generator=torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        GPT(config.model)(tokens, tokens)
    routed = set(config.model.routed_layer_ids)
    attention = sum(2 * n * n * d for n in
                    (seq // 4 if i in routed else seq for i in range(config.model.num_layers)))
    assert counter.get_total_flops() == batch * (model_flops(config.model, seq) - attention)
