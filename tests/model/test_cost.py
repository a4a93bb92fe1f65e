"""The cost model against the built models, DeepSpeed's ZeRO estimators and the tensors
autograd actually saves."""

from __future__ import annotations

import pytest
import torch

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.model.cost import (
    Layout,
    Links,
    Params,
    activation_bytes,
    bubble_fraction,
    comm_bytes,
    comm_seconds,
    convert_host_bytes,
    exposed_comm_seconds,
    model_state_bytes,
    rank_params,
    step_time,
)
from tests.model.engine_bytes_worker import engine_state_bytes, tiny_engine_config
from tests.model.saved_bytes import saved_bytes as counted_saved_bytes

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
    # 2 B weights + 2 B grads, then 4 B fp32 grads + 12 B fp32 master and Adam: sharded by
    # stage (bf16 ZeRO-1 keeps the fp32 gradients whole, as DeepSpeed's BF16_Optimizer does).
    assert totals == [20000, 2000 + 2000 + 4000 + 12000 / 4, 2000 + 18000 / 4]
    fp32 = model_state_bytes(params, Layout(precision="fp32"))
    assert (fp32.params, fp32.grads, fp32.optim) == (4000, 4000, 8000)


def saved_bytes(m, batch: int, seq: int, recompute: str = "none") -> int:
    """Bytes of the unique storages autograd saves in a forward with the loss (weights
    left out)."""
    torch.manual_seed(0)
    layers = range(m.num_layers) if recompute != "none" else ()
    model = GPT(m, recompute_layers=layers, recompute=recompute)
    tokens = torch.randint(0, m.vocab_size, (batch, seq))
    with counted_saved_bytes(model) as seen:
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


@pytest.mark.parametrize("variant", ["dense", "mod", "moe", "mode"])
@pytest.mark.parametrize("width", [64, 128])
def test_selective_recompute_bytes_match_saved_tensors(dist, variant, width):
    """train.recompute=selective drops the RoPE'd queries and keys, the softmax statistics,
    silu(gate) and the activation's second copy: within 1 % (the RoPE table rows each block
    saves are left out)."""
    m = load_config(None, [*TINY, f"model.hidden_size={width}", *VARIANTS[variant]]).model
    measured = saved_bytes(m, batch=2, seq=64, recompute="selective")
    predicted = activation_bytes(m, Layout(micro_batch=2, precision="fp32",
                                           recompute="selective"), 64, layers=m.num_layers)
    assert predicted == pytest.approx(measured, rel=0.01)
    assert measured < saved_bytes(m, batch=2, seq=64)


@pytest.mark.parametrize("variant", ["moe", "mode"])
@pytest.mark.parametrize("extra", [[], ["model.moe.top_k=2", "model.moe.num_experts=8"]])
def test_expert_activation_bytes_match_saved_tensors(dist, variant, extra):
    """MoE blocks (DeepSpeed's dispatch: the slots' inputs, the combined output, the gate's
    logits and route indices) within 1 %; MoDE (no-op experts, MoD in front) within 2 %,
    as MoD's routed blocks."""
    m = load_config(None, [*TINY, "model.hidden_size=64", *VARIANTS[variant], *extra]).model
    measured = saved_bytes(m, batch=2, seq=64)
    predicted = activation_bytes(m, Layout(micro_batch=2, precision="fp32"), 64,
                                 layers=m.num_layers)
    assert predicted == pytest.approx(measured, rel=0.01 if variant == "moe" else 0.02)


def test_sequence_parallelism_shards_the_norms_and_residuals():
    m = load_config(None, [*TINY, "model.hidden_size=64", "model.num_layers=4"]).model
    tp = Layout(tensor=4, micro_batch=2)
    sp = Layout(tensor=4, micro_batch=2, sequence_parallel=True)
    # The 6d elements a token of each block keeps whole on every TP rank, now a quarter.
    per_block = 2 * 64 * 2 * 6 * 64 * (1 - 1 / 4)
    head = 2 * 64 * 2 * (3 * 64 + 1) * (1 - 1 / 4)
    assert activation_bytes(m, tp, 64) - activation_bytes(m, sp, 64) == pytest.approx(
        4 * per_block + head)
    assert comm_bytes(m, sp, 64, 8) == comm_bytes(m, tp, 64, 8)  # AG + RS = one all-reduce


def test_tensor_traffic_is_exposed_and_crosses_nodes_only_beyond_one():
    m = load_config(None, [*TINY, "model.hidden_size=64"]).model
    links = Links(intra_node_gbps=400, inter_node_gbps=40, gpus_per_node=8)
    inside = comm_seconds(m, Layout(tensor=8), 64, 8, links)
    across = comm_seconds(m, Layout(tensor=16), 64, 8, links)
    sent = comm_bytes(m, Layout(tensor=8), 64, 8)["tp"]
    assert inside["tp"] == pytest.approx(sent / 400e9)
    assert across["tp"] == pytest.approx(comm_bytes(m, Layout(tensor=16), 64, 8)["tp"] / 40e9)
    lay = Layout(tensor=8)
    assert exposed_comm_seconds(m, lay, inside, backward_s=100.0) == pytest.approx(inside["tp"])


def test_gradient_reduction_hides_behind_backward_but_its_last_bucket():
    m = load_config(None, [*TINY, "model.hidden_size=64"]).model
    lay = Layout(data=16)
    params = rank_params(m, lay)
    last = params.largest_layer / params.total
    comm = {"tp": 0.0, "ep": 0.0, "pp": 0.0, "dp": 2.0}
    assert exposed_comm_seconds(m, lay, comm, backward_s=10.0) == pytest.approx(2 * last)
    # A backward shorter than the reduction leaves the rest exposed.
    assert exposed_comm_seconds(m, lay, comm, backward_s=0.5) == pytest.approx(1.5)
    # DP of 16 spans two 8-GPU nodes: InfiniBand; of 8, NVLink.
    links = Links()
    assert comm_seconds(m, Layout(data=16), 64, 16, links)["dp"] > 5 * comm_seconds(
        m, Layout(data=8), 64, 16, links)["dp"]


def test_step_time_adds_the_exposed_communication_and_selective_rerun():
    m = load_config(None, [*TINY, "model.hidden_size=64"]).model
    lay = Layout(tensor=2, data=4)
    bare = step_time(m, lay, 64, 8, 100.0, 0.5)
    linked = step_time(m, lay, 64, 8, 100.0, 0.5, Links())
    assert bare.comm_s == 0 and linked.comm_s > 0
    assert linked.seconds == pytest.approx(bare.seconds + linked.comm_s)
    sel = step_time(m, Layout(tensor=2, data=4, recompute="selective"), 64, 8, 100.0, 0.5)
    full = step_time(m, Layout(tensor=2, data=4, recompute="full"), 64, 8, 100.0, 0.5)
    assert bare.seconds < sel.seconds < full.seconds


def test_routing_and_recomputation_shrink_activations():
    dense = load_config(None, [*TINY, "model.hidden_size=64", "model.num_layers=8"]).model
    mod = load_config(None, [*TINY, "model.hidden_size=64", "model.num_layers=8",
                             "model.mod.enabled=true"]).model
    lay = Layout(micro_batch=2)
    assert activation_bytes(mod, lay, 64) < activation_bytes(dense, lay, 64)
    full = Layout(micro_batch=2, recompute="full")
    assert activation_bytes(dense, full, 64) < activation_bytes(dense, lay, 64) / 2
    sel = Layout(micro_batch=2, recompute="selective")
    assert activation_bytes(dense, full, 64) < activation_bytes(dense, sel, 64) < (
        activation_bytes(dense, lay, 64))


def test_bubble():
    assert bubble_fraction(1, 8) == 0
    assert bubble_fraction(4, 13) == pytest.approx(3 / 16)


def test_convert_host_bytes_cover_the_fp32_weights_and_four_largest_tensors(dist):
    m = load_config("configs/shakespeare_mod.yaml", ["model.vocab_size=8000"]).model
    sizes = {n: p.numel() * 4 for n, p in GPT(m).state_dict().items()
             if not n.endswith("_extra_state")}
    assert convert_host_bytes(m) == 2 * 2**30 + sum(sizes.values()) + 4 * max(sizes.values())


@pytest.mark.slow
@pytest.mark.parametrize("zero, precision", [(0, "fp32"), (1, "fp32"), (3, "fp32"),
                                             (1, "bf16"), (2, "bf16"), (3, "bf16")])
def test_model_states_are_the_bytes_deepspeeds_engine_holds(dist, zero, precision):
    """One rank on CPU: weights and optimizer state (fp32 master + Adam m, v) exact;
    gradients exact except ZeRO-2, whose 16-bit gradients DeepSpeed reduces through its
    bucket straight into the fp32 ones (2 B a parameter fewer than counted: the model
    keeps that bucket's worst case)."""
    config = tiny_engine_config(zero, precision)
    layout = Layout(zero_stage=zero, precision=precision)
    params = rank_params(config.model, layout)
    want = model_state_bytes(params, layout)
    weights, grads, optim = engine_state_bytes(config, dist)
    gathered = 4 * params.largest_layer if zero == 3 else 0  # transient, not held after a step
    assert weights == want.params - gathered
    assert optim == want.optim
    assert grads == want.grads - (2 * params.total if zero == 2 else 0)


@pytest.mark.slow
def test_model_states_sharded_over_two_ranks_are_the_engines(tmp_path):
    """2 data-parallel ranks (gloo), ZeRO 1-3 in bf16, and expert parallelism of 2 (MoE,
    ZeRO-1): each rank's optimizer state (fp32 master + Adam m, v), and its weights below
    ZeRO-3, within 1 % of the model (DeepSpeed pads its flat partitions to an alignment)."""
    import json
    import subprocess

    from tests.conftest import cli_env
    from tests.train.helpers import deepspeed_launcher

    proc = subprocess.run([*deepspeed_launcher(2), "--module", "tests.model.engine_bytes_worker",
                           str(tmp_path)], env=cli_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        measured = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert len(measured) == 4
        for case in measured:
            config = tiny_engine_config(case["zero"], "bf16", case["overrides"])
            layout = Layout(data=2, expert=case["expert"], zero_stage=case["zero"])
            params = rank_params(config.model, layout)
            want = model_state_bytes(params, layout)
            if case["zero"] < 3:  # ZeRO-3 keeps parameters below its persistence
                # threshold (1e5 elements: all of this tiny model's) whole on every rank
                assert case["weights"] == pytest.approx(want.params, rel=0.01), case
            assert case["optim"] == pytest.approx(want.optim, rel=0.01), case
            # ZeRO-2 reduces its 16-bit gradients through a bucket into the fp32 partition.
            unbucketed = want.grads - (2 * params.total / 2 if case["zero"] == 2 else 0)
            assert case["grads"] == pytest.approx(unbucketed, rel=0.01), case
