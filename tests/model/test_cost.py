"""The cost model against the built models, DeepSpeed's ZeRO estimators and the tensors
autograd actually saves."""

from __future__ import annotations

import pytest
import torch

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.model.cost import (
    Layout,
    Params,
    activation_bytes,
    bubble_fraction,
    convert_host_bytes,
    model_state_bytes,
    rank_params,
)

TINY = ["model.vocab_size=67", "model.num_layers=2", "model.num_heads=4",
        "model.max_seq_length=64", "data.seq_length=64", "model.mod.predictor=false",
        "model.mod.inference_routing=router"]
VARIANTS = {
    "dense": [],
    "mod": ["model.mod.enabled=true", "model.mod.routed_layers=[0]"],
    "moe": ["model.moe.enabled=true", "model.moe.num_experts=4"],
    "mode": ["model.mod.enabled=true", "model.moe.enabled=true", "model.moe.noop_experts=2",
             "model.tie_embeddings=false"],
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_is_the_built_models(dist, variant):
    m = load_config(None, [*TINY, "model.hidden_size=32", *VARIANTS[variant]]).model
    built = sum(p.numel() for p in GPT(m).parameters())
    assert rank_params(m, Layout()).total == built


def test_tensor_and_expert_parallel_split_the_table():
    m = load_config(None, [*TINY, "model.hidden_size=32", *VARIANTS["moe"]]).model
    whole = rank_params(m, Layout())
    split = rank_params(m, Layout(tensor=2, data=2, expert=2))
    assert split.expert * 2 == whole.expert  # half of the experts on each EP rank
    assert whole.dense / 2 < split.dense < whole.dense  # norms and gate stay whole


@pytest.mark.parametrize("gpus", [1, 8, 64])
def test_zero2_and_zero3_states_equal_deepspeeds_estimators(gpus):
    """Exact (to DeepSpeed's int rounding): same bytes a parameter, same sharding."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    params = Params(dense=6_738_415_616, expert=0, largest_layer=202_383_360)
    _, ds2 = estimate_zero2_model_states_mem_needs(params.total, gpus, 1, cpu_offload=False)
    ours2 = model_state_bytes(params, Layout(data=gpus, zero_stage=2)).total
    assert ours2 == pytest.approx(ds2, abs=2)
    _, ds3, _ = estimate_zero3_model_states_mem_needs(params.total, params.largest_layer, gpus,
                                                      1, cpu_offload=False)
    ours3 = model_state_bytes(params, Layout(data=gpus, zero_stage=3)).total
    assert ours3 == pytest.approx(ds3, abs=2)


def test_zero_stages_shard_more_and_fp32_has_no_16_bit_copies():
    params = Params(1000, 0, 10)
    totals = [model_state_bytes(params, Layout(data=4, zero_stage=z)).total for z in range(3)]
    # 2 B weights + 2 B grads, then 4 B fp32 grads + 12 B fp32 master and Adam: sharded by stage.
    assert totals == [20000, 2000 + 2000 + 16000 / 4, 2000 + 18000 / 4]
    fp32 = model_state_bytes(params, Layout(precision="fp32"))
    assert (fp32.params, fp32.grads, fp32.optim) == (4000, 4000, 8000)


def saved_bytes(m, batch: int, seq: int) -> int:
    """Bytes of the unique storages autograd saves in a forward with the loss (weights
    left out)."""
    torch.manual_seed(0)
    model = GPT(m)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in weights:
            seen[s.data_ptr()] = s.nbytes()
        return t

    tokens = torch.randint(0, m.vocab_size, (batch, seq))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(tokens, labels=tokens)
    return sum(seen.values())


@pytest.mark.parametrize("variant", ["dense", "mod"])
@pytest.mark.parametrize("width", [64, 128])
def test_activation_bytes_match_saved_tensors(dist, variant, width):
    """Dense: exact on these models; MoD within 2 % (the gathered RoPE rows and indices of a
    routed block are left out of the formula)."""
    m = load_config(None, [*TINY, f"model.hidden_size={width}", *VARIANTS[variant]]).model
    measured = saved_bytes(m, batch=2, seq=64)
    predicted = activation_bytes(m, Layout(micro_batch=2, precision="fp32"), 64,
                                 layers=m.num_layers)
    assert predicted == pytest.approx(measured, rel=0.02 if variant == "mod" else 1e-9)


def test_routing_and_recomputation_shrink_activations():
    dense = load_config(None, [*TINY, "model.hidden_size=64", "model.num_layers=8"]).model
    mod = load_config(None, [*TINY, "model.hidden_size=64", "model.num_layers=8",
                             "model.mod.enabled=true"]).model
    lay = Layout(micro_batch=2)
    assert activation_bytes(mod, lay, 64) < activation_bytes(dense, lay, 64)
    full = Layout(micro_batch=2, recompute="full")
    assert activation_bytes(dense, full, 64) < activation_bytes(dense, lay, 64) / 2


def test_bubble():
    assert bubble_fraction(1, 8) == 0
    assert bubble_fraction(4, 13) == pytest.approx(3 / 16)


def test_convert_host_bytes_cover_the_fp32_weights_and_four_largest_tensors(dist):
    m = load_config("configs/shakespeare_mod.yaml", ["model.vocab_size=8000"]).model
    sizes = {n: p.numel() * 4 for n, p in GPT(m).state_dict().items()
             if not n.endswith("_extra_state")}
    assert convert_host_bytes(m) == 2 * 2**30 + sum(sizes.values()) + 4 * max(sizes.values())
