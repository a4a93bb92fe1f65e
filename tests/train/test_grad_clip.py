"""modtrain's own gradient clipping (ZeRO stage 0, fp32) against torch's and DeepSpeed's."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from modtrain.config import load_config
from modtrain.train.ds_config import deepspeed_config
from modtrain.train.grad_clip import GradientClipper, modtrain_clips
from tests.train.helpers import deepspeed_command, run, single_command, step_losses, tiny_config


def _records(run_dir: Path) -> dict[int, dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if "loss" in r}


def test_clipper_equals_torch_clip_grad_norm():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 4))
    b = copy.deepcopy(a)
    x = torch.randn(32, 8)
    for model in (a, b):
        model(x).square().sum().backward()
    norm = GradientClipper(a, 0.5).clip_()
    want = torch.nn.utils.clip_grad_norm_(b.parameters(), 0.5)
    torch.testing.assert_close(norm, want)
    assert norm > 0.5  # the gradients were scaled
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_deepspeed_clips_only_where_modtrain_does_not():
    for overrides, ours in ((["train.zero_stage=0"], True), (["train.zero_stage=1"], False),
                            (["train.zero_stage=0", "train.precision=bf16"], False),
                            (["train.zero_stage=0", "train.grad_clip=0"], False)):
        config = load_config(None, ["model.vocab_size=67", "train.grad_clip=0.5", *overrides])
        assert modtrain_clips(config) is ours
        clip = deepspeed_config(config, 1)["gradient_clipping"]
        assert clip == (0.0 if ours else config.train.grad_clip)


@pytest.mark.slow
def test_stage0_norm_equals_deepspeed_zero1_and_tensor_parallel(tmp_path, char_store,
                                                                 char_tokenizer):
    """Clipping active at every step (grad_clip 0.05): one process with modtrain's clipping
    (stage 0), with DeepSpeed's (ZeRO-1), and tensor-parallel x2 with modtrain's clipping
    log the same gradient norms and losses."""
    common = ["train.steps=6", "train.grad_clip=0.05", "model.vocab_multiple=2",
              "model.num_heads=2", "model.mod.enabled=false"]
    config = lambda name: tiny_config(tmp_path, char_store, char_tokenizer, name)  # noqa: E731
    run(single_command(config("stage0"), *common, "train.zero_stage=0"))
    run(single_command(config("zero1"), *common, "train.zero_stage=1"))
    run(deepspeed_command(config("tp2"), *common, "train.zero_stage=0", "parallel.tensor=2"))
    ours, deepspeed, tp = (_records(tmp_path / n) for n in ("stage0", "zero1", "tp2"))
    assert sorted(ours) == sorted(deepspeed) == sorted(tp) == list(range(1, 7))
    for step in ours:
        norm = ours[step]["grad_norm"]
        assert norm > 0.05, "clipping was not active"
        for other in (deepspeed, tp):
            assert abs(other[step]["grad_norm"] - norm) <= 1e-5 * norm, (step, other[step])
    for other in ("zero1", "tp2"):
        worst = max(abs(a - b) for a, b in zip(step_losses(tmp_path / "stage0").values(),
                                                step_losses(tmp_path / other).values()))
        print(f"stage 0 vs {other}: max |loss diff| {worst:.2e}")
        assert worst < 1e-5
