"""Expert parallelism (DeepSpeed's MoE layer, gloo all-to-all) reproduces one process: MoE,
staged MoDE and integrated MoDE with EP=2, EP=2 x DP=2, and resume of an EP=2 checkpoint.

Capacity factors are high enough that no token is dropped, so every layout routes the
same tokens to the same experts; the balance loss is averaged over the whole micro-batch
on every layout (docs/moe.md), so the losses agree to rounding.
"""

from __future__ import annotations

import subprocess

import pytest

from modtrain.checkpoint.read.reader import read_checkpoint
from tests.conftest import cli_env
from tests.train.helpers import deepspeed_command, run, single_command, step_losses, tiny_config

# fp32 on CPU: the layouts differ in summation order only (all-to-all and all-reduce).
LOSS_TOLERANCE = 1e-5
WEIGHT_TOLERANCE = 1e-5

NO_DROPS = ["model.moe.enabled=true", "model.moe.num_experts=4", "model.moe.capacity_factor=8",
            "model.moe.eval_capacity_factor=8"]
VARIANTS = {
    "moe": ["model.mod.enabled=false"],
    "mode_staged": ["model.mod.enabled=true"],
    "mode_integrated": ["model.mod.enabled=false", "model.moe.noop_experts=2",
                        "train.zero_stage=2"],
}


def _weights_differ(a, b) -> float:
    ta, tb = read_checkpoint(a).tensors, read_checkpoint(b).tensors
    assert set(ta) == set(tb)
    assert any("deepspeed_experts" in n for n in ta)
    return max((ta[n] - tb[n]).abs().max().item() for n in ta)


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_two_expert_ranks_match_one_process(tmp_path, char_store, char_tokenizer, variant):
    common = ["train.steps=8", *NO_DROPS, *VARIANTS[variant]]
    run(single_command(tiny_config(tmp_path, char_store, char_tokenizer, "one"), *common))
    two = tiny_config(tmp_path, char_store, char_tokenizer, "two", micro=4)
    run(deepspeed_command(two, *common, "parallel.expert=2"))
    a, b = step_losses(tmp_path / "one"), step_losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    worst = max(abs(a[s] - b[s]) for s in a)
    weights = _weights_differ(tmp_path / "one", tmp_path / "two")
    print(f"{variant}: EP=2 vs 1 process, 8 steps: max |loss diff| {worst:.2e}, "
          f"max |weight diff| {weights:.2e}")
    assert worst < LOSS_TOLERANCE
    assert weights < WEIGHT_TOLERANCE


@pytest.mark.slow
def test_expert_and_data_parallel_four_ranks(tmp_path, char_store, char_tokenizer):
    """EP=2 x DP=2: experts split over 2 ranks, each expert replicated twice and its optimizer
    state partitioned over its expert data-parallel group (ZeRO-1)."""
    common = ["train.steps=6", *NO_DROPS, "model.mod.enabled=false"]
    run(single_command(tiny_config(tmp_path, char_store, char_tokenizer, "one"), *common))
    four = tiny_config(tmp_path, char_store, char_tokenizer, "four", micro=2)
    run(deepspeed_command(four, *common, "parallel.expert=2", nproc=4))
    a, b = step_losses(tmp_path / "one"), step_losses(tmp_path / "four")
    worst = max(abs(a[s] - b[s]) for s in a)
    weights = _weights_differ(tmp_path / "one", tmp_path / "four")
    print(f"EP=2 x DP=2 vs 1 process, 6 steps: max |loss diff| {worst:.2e}, "
          f"max |weight diff| {weights:.2e}")
    assert sorted(b) == list(range(1, 7))
    assert worst < LOSS_TOLERANCE
    assert weights < WEIGHT_TOLERANCE


@pytest.mark.slow
def test_expert_parallel_resume_continues_exactly(tmp_path, char_store, char_tokenizer):
    common = [*NO_DROPS, "model.mod.enabled=true", "model.moe.noop_experts=2",
              "parallel.expert=2", "train.decay_steps=8"]
    straight = tiny_config(tmp_path, char_store, char_tokenizer, "straight", micro=4)
    run(deepspeed_command(straight, *common, "train.steps=8"))
    cut = tiny_config(tmp_path, char_store, char_tokenizer, "cut", micro=4)
    run(deepspeed_command(cut, *common, "train.steps=4"))
    run(deepspeed_command(cut, *common, "train.steps=8", "--resume", "auto"))
    a, b = step_losses(tmp_path / "straight"), step_losses(tmp_path / "cut")
    assert sorted(b) == list(range(1, 9))
    assert all(a[s] == b[s] for s in range(5, 9)), {s: (a[s], b[s]) for s in range(5, 9)}
    assert _weights_differ(tmp_path / "straight", tmp_path / "cut") == 0.0


def test_expert_layout_change_is_refused(tmp_path, char_store, char_tokenizer):
    config = tiny_config(tmp_path, char_store, char_tokenizer, "saved", micro=4)
    run(single_command(config, *NO_DROPS, "train.steps=2"))
    proc = subprocess.run(
        deepspeed_command(config, *NO_DROPS, "train.steps=4", "--resume", "auto"),
        env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert ("modtrain: error: checkpoint step_00000002 of an expert model"
            in proc.stdout + proc.stderr)
