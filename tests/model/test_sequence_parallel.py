"""Sequence parallelism (TP=2, 2 gloo ranks) reproduces one process and TP=2 without it:
loss, gradients, and MoD's top-k over the whole row, dense and routed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modtrain.config import load_config
from modtrain.model import GPT
from tests.conftest import cli_env
from tests.parallel.tp_step_worker import batch
from tests.train.helpers import free_port

LOSS_TOLERANCE = 1e-5
GRAD_TOLERANCE = 1e-5  # max |g - g_ref| relative to max |g_ref| per tensor

MODEL = ["model.vocab_size=67", "model.vocab_multiple=2", "model.num_layers=4",
         "model.hidden_size=32", "model.num_heads=4", "model.max_seq_length=32",
         "data.seq_length=32"]
MOD = ["model.mod.enabled=true"]
EVERY = ["model.mod.routed_layers=[0,1,2,3]"]
# S = 32: capacity 0.125 routes 4 tokens a row (2 a rank), 0.5 routes 16.
CASES = {
    "dense": [],
    "mod-0.125-every-other": [*MOD, "model.mod.capacity=0.125"],
    "mod-0.125-every": [*MOD, "model.mod.capacity=0.125", *EVERY],
    "mod-0.5-every-other": [*MOD, "model.mod.capacity=0.5"],
    "mod-0.5-every": [*MOD, "model.mod.capacity=0.5", *EVERY],
    # Recomputed routed blocks rerun their sequence-parallel collectives in backward.
    "mod-0.125-recompute": [*MOD, "model.mod.capacity=0.125", "train.recompute=full"],
}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    """Every case in one 2-rank launch (a launch costs more than a case)."""
    out = tmp_path_factory.mktemp("sp") / "sp.pt"
    cases = {name: [*MODEL, *extra, "parallel.tensor=2", "parallel.sequence_parallel=true"]
             for name, extra in CASES.items()}
    worker = Path(__file__).with_name("sp_step_worker.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(worker),
         str(out), json.dumps(cases)],
        # The worker imports helpers of tests/ (the repository root on its path).
        env={**cli_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out, weights_only=False)


def one_process(extra: list[str]) -> tuple[GPT, torch.Tensor]:
    config = load_config(None, [*MODEL, *extra])
    model = GPT(config.model, seed=7)
    tokens = batch(config.model.vocab_size, config.data.seq_length)
    loss = model(tokens[:, :-1], tokens[:, 1:]).loss
    loss.backward()
    return model, loss.detach()


def worst_grad(grads: dict[str, torch.Tensor], model: GPT) -> float:
    return max(float((grads[n] - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-12))
               for n, p in model.named_parameters())


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_sequence_parallel_step_matches_one_process_and_tp2(two_ranks, dist, case):
    model, loss = one_process(CASES[case])
    sp, tp = two_ranks[case]["sp"], two_ranks[case]["tp"]
    for other, name in ((loss, "one process"), (tp["loss"], "TP=2")):
        assert abs(float(sp["loss"] - other)) < LOSS_TOLERANCE, f"loss differs from {name}"
    worst = worst_grad(sp["grads"], model)
    worst_tp = max(float((sp["grads"][n] - g).abs().max() / g.abs().max().clamp_min(1e-12))
                   for n, g in tp["grads"].items())
    print(f"SP vs one process ({case}): |loss diff| {abs(float(sp['loss'] - loss)):.2e}, "
          f"max relative grad diff {worst:.2e}; vs TP=2 {worst_tp:.2e}")
    # Norm and router weights see one shard each: a missing sum over ranks halves them.
    assert worst < GRAD_TOLERANCE
    assert worst_tp < GRAD_TOLERANCE
    routed = [b for b in model.blocks if b.routed]
    assert len(sp["index"]) == len(routed)
    for block, ranks in zip(routed, sp["index"]):
        for index in ranks:  # both ranks' selection of every row, exactly one process's
            assert torch.equal(index, block.last_index)
    for block, ranks in zip(routed, sp["tied_index"]):
        k = block.last_index.shape[0]
        lowest = torch.arange(k).unsqueeze(1).expand_as(block.last_index)
        for index in ranks:  # all scores tied: the lowest positions, on the shards too
            assert torch.equal(index, lowest)
    for stat, value in sp["stats"].items():  # routing statistics of the whole rows
        assert torch.allclose(value, tp["stats"][stat], atol=1e-6), stat


@pytest.mark.slow
def test_each_rank_draws_its_own_dropout_mask_on_its_shard(two_ranks):
    """Under SP the ranks hold other tokens, so their hidden-dropout masks differ (the
    tensor-parallel stream); under TP alone the stream is replicated and so are the masks."""
    sp, tp = two_ranks["dropout"]["sp"], two_ranks["dropout"]["tp"]
    assert 0.3 < sp[0].float().mean() < 0.7
    assert not torch.equal(sp[0], sp[1])
    assert torch.equal(tp[0], tp[1])
