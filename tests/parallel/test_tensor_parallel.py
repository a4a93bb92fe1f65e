"""Tensor parallelism (megatron-core, 2 gloo ranks) reproduces the single-process model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modtrain.config import load_config
from modtrain.model import GPT
from tests.conftest import cli_env
from tests.parallel.tp_step_worker import batch
from tests.train.helpers import (
    deepspeed_command,
    free_port,
    run,
    single_command,
    step_losses,
    tiny_config,
)

# fp32: TP changes only the summation order inside the split matmuls and the all-reduces.
LOSS_TOLERANCE = 1e-5
GRAD_TOLERANCE = 1e-5  # max |g_tp - g_ref| relative to max |g_ref| per tensor
CURVE_TOLERANCE = 1e-4

MODEL = ["model.vocab_size=67", "model.vocab_multiple=2", "model.num_layers=4",
         "model.hidden_size=32", "model.num_heads=4", "model.max_seq_length=32",
         "data.seq_length=32"]


@pytest.mark.slow
@pytest.mark.parametrize("mod,extra", [
    (True, []), (False, []),
    # Recomputed blocks rerun their tensor-parallel collectives in backward; the chunk
    # setting leaves the vocabulary-parallel loss in place.
    (True, ["train.recompute=full", "train.loss_chunk_tokens=16"]),
], ids=["mod", "dense", "mod-recompute"])
def test_tp2_step_matches_one_process(tmp_path, dist, mod, extra):
    overrides = [*MODEL, f"model.mod.enabled={str(mod).lower()}", "model.mod.capacity=0.25",
                 *extra]
    out = tmp_path / "tp2.pt"
    worker = Path(__file__).with_name("tp_step_worker.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(worker),
         str(out), *overrides, "parallel.tensor=2"],
        env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tp = torch.load(out, weights_only=False)

    config = load_config(None, overrides)
    model = GPT(config.model, seed=7)
    tokens = batch(config.model.vocab_size, config.data.seq_length)
    ref = model(tokens[:, :-1], tokens[:, 1:])
    ref.loss.backward()

    loss_diff = abs(float(tp["loss"]) - float(ref.loss))
    worst = 0.0
    for name, p in model.named_parameters():
        weight, grad = tp["params"][name]
        assert torch.equal(weight, p.detach()), f"{name}: TP=2 starts from other weights"
        worst = max(worst, float((grad - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-12)))
    print(f"TP2 vs TP1 ({'MoD' if mod else 'dense'}): |loss diff| {loss_diff:.2e}, "
          f"max relative grad diff {worst:.2e}")
    assert loss_diff < LOSS_TOLERANCE
    assert worst < GRAD_TOLERANCE
    if mod:
        assert tp["routing_agrees"] and tp["ties_agree"]


@pytest.mark.slow
def test_tp2_training_curve_matches_one_process(tmp_path, char_store, char_tokenizer):
    steps = ["train.steps=20", "model.vocab_multiple=2", "model.num_heads=2"]
    run(single_command(tiny_config(tmp_path, char_store, char_tokenizer, "tp1"), *steps))
    run(deepspeed_command(tiny_config(tmp_path, char_store, char_tokenizer, "tp2"), *steps,
                          "parallel.tensor=2"))
    a, b = step_losses(tmp_path / "tp1"), step_losses(tmp_path / "tp2")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    worst = max(abs(a[s] - b[s]) for s in a)
    print(f"TP2 vs TP1, 20 steps: max |loss diff| {worst:.2e}")
    assert worst < CURVE_TOLERANCE


@pytest.mark.slow
def test_tp2_attention_dropout_draws_per_rank_and_the_rest_agrees(tmp_path):
    """Each TP rank's head-split attention dropout is drawn from seed + 2718 + tp_rank
    (megatron-core's convention), not the shared stream; replicated dropout agrees, so both
    ranks compute the same loss."""
    out = tmp_path / "dropout.pt"
    worker = Path(__file__).with_name("tp_dropout_worker.py")
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(worker),
         str(out), *MODEL, "model.dropout=0.5", "parallel.tensor=2"],
        # The worker imports a helper of tests/ (the repository root on its path).
        env={**cli_env(), "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = torch.load(out, weights_only=False)
    assert torch.equal(saved["losses"][0], saved["losses"][1])
    query, key, value, output = saved["attention"]

    def drawn(rank: int, seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        q, k, v = (t[rank].permute(1, 2, 0, 3) for t in (query, key, value))
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, dropout_p=0.5,
                                                             is_causal=True)
        return o.permute(2, 0, 1, 3).reshape(output[rank].shape)

    for rank in (0, 1):
        assert torch.allclose(output[rank], drawn(rank, 7 + 2718 + rank), atol=1e-6)
        assert not torch.allclose(output[rank], drawn(rank, 7), atol=1e-3)
