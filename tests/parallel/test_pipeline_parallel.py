"""Pipeline parallelism (DeepSpeed's pipeline engine over megatron-core layers, 2 gloo stages)
reproduces the single-process model: one step's loss and gradients, and a 20-step curve."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.parallel.pipeline_stages import layer_costs, partition, stage_costs
from tests.conftest import cli_env
from tests.parallel.tp_step_worker import batch
from tests.train.helpers import deepspeed_command as ds_command
from tests.train.helpers import (
    deepspeed_launcher,
    run,
    single_command,
    step_losses,
    tiny_config,
)

LOSS_TOLERANCE = 1e-5
GRAD_TOLERANCE = 1e-5  # relative to the largest gradient entry of each tensor
CURVE_TOLERANCE = 1e-4

MODEL = ["model.vocab_size=67", "model.num_layers=4", "model.hidden_size=32",
         "model.num_heads=4", "model.max_seq_length=32", "data.seq_length=32",
         "model.mod.capacity=0.25", "train.global_batch_size=4", "train.micro_batch_size=2",
         "train.zero_stage=0", "train.grad_clip=0"]


@pytest.mark.slow
@pytest.mark.parametrize("mod,extra", [
    (True, []), (False, []),
    # The last stage hands (hidden, head weight) to the chunked loss (tied and untied head).
    (False, ["train.loss_chunk_tokens=24"]),
    (False, ["train.loss_chunk_tokens=24", "model.tie_embeddings=false"]),
    (True, ["train.recompute=full"]),  # each stage's blocks recompute in backward
], ids=["mod", "dense", "chunked-loss-tied", "chunked-loss-untied", "mod-recompute"])
def test_pp2_step_matches_one_process(tmp_path, dist, mod, extra):
    overrides = [*MODEL, f"model.mod.enabled={str(mod).lower()}", *extra]
    proc = subprocess.run(
        [*deepspeed_launcher(), "--module", "tests.parallel.pp_step_worker", str(tmp_path),
         *overrides, "parallel.pipeline=2"],
        env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    config = load_config(None, overrides)
    model = GPT(config.model, seed=config.run.seed)
    tokens = batch(config.model.vocab_size, config.data.seq_length)
    ref = model(tokens[:, :-1], tokens[:, 1:])
    ref.loss.backward()

    grads: dict[str, torch.Tensor] = {}
    for r in ranks:
        for name, weight in r["weights"].items():
            assert torch.equal(weight, dict(model.named_parameters())[name].detach()), name
        for name, g in r["grads"].items():  # the tied embedding: a part on each end stage
            grads[name] = grads[name] + g if name in grads else g
    assert set(grads) == {n for n, _ in model.named_parameters()}
    worst = max(float((grads[n] - p.grad).abs().max() / p.grad.abs().max().clamp_min(1e-12))
                for n, p in model.named_parameters())
    loss_diff = abs(ranks[0]["loss"] - float(ref.lm_loss))
    print(f"PP2 vs 1 process ({'MoD' if mod else 'dense'}): |loss diff| {loss_diff:.2e}, "
          f"max relative grad diff {worst:.2e}")
    assert loss_diff < LOSS_TOLERANCE
    assert worst < GRAD_TOLERANCE


@pytest.mark.slow
def test_pp2_training_curve_matches_one_process(tmp_path, char_store, char_tokenizer):
    steps = ["train.steps=20", "train.micro_batch_size=4"]
    run(single_command(tiny_config(tmp_path, char_store, char_tokenizer, "pp1"), *steps))
    run(ds_command(tiny_config(tmp_path, char_store, char_tokenizer, "pp2"), *steps,
                   "parallel.pipeline=2"))
    a, b = step_losses(tmp_path / "pp1"), step_losses(tmp_path / "pp2")
    assert sorted(a) == sorted(b) == list(range(1, 21))
    worst = max(abs(a[s] - b[s]) for s in a)
    print(f"PP2 vs 1 process, 20 steps: max |loss diff| {worst:.2e}")
    assert worst < CURVE_TOLERANCE


def test_stages_are_balanced_by_flops_not_layer_count():
    # The last four blocks are routed at capacity 0.125: each costs a fraction of a dense one.
    config = load_config(None, ["model.mod.enabled=true", "model.num_layers=8",
                                "model.mod.routed_layers=[4,5,6,7]", "model.hidden_size=256",
                                "model.num_heads=4", "model.vocab_size=256",
                                "parallel.pipeline=2"])
    names, costs = layer_costs(config)
    table = stage_costs(config, partition(costs, 2))
    blocks = [len([n for n in row.layers if n.startswith("block")]) for row in table]
    assert blocks[0] < blocks[1]  # the cheap routed blocks share a stage with more of them
    by_count = stage_costs(config, [0, 5, len(costs)])  # 4 + 4 blocks
    assert max(r.share for r in table) < max(r.share for r in by_count)
    assert sum(r.flops for r in table) == pytest.approx(sum(costs))


def test_zero_2_with_pipeline_is_refused(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "modtrain", "train", "configs/shakespeare_mod.yaml",
         "parallel.pipeline=2", "train.zero_stage=2"],
        env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "use train.zero_stage=1" in proc.stderr.strip().splitlines()[-1]
