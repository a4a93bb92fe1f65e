"""Atomic saves, retention, and resume exactly where a killed run stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.train import checkpoint
from modtrain.train.ds_config import deepspeed_config
from modtrain.train.optim import build_optimizer
from modtrain.train.resume import current_layout, plan_resume
from tests.conftest import cli_env
from tests.train.helpers import (
    deepspeed_command,
    run,
    single_command,
    step_losses,
    tiny_config,
)


def _wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout: float = 300):
    deadline = time.monotonic() + timeout
    metrics = run_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.is_file() and max(step_losses(run_dir), default=0) >= step:
            return
        assert proc.poll() is None, proc.stderr.read()[-3000:] if proc.stderr else ""
        time.sleep(0.005)
    raise TimeoutError(f"step {step} not reached")


@pytest.mark.slow
def test_kill_9_and_resume_is_bitwise_identical(tmp_path, char_store, char_tokenizer):
    steps = ["train.steps=40", "train.save_interval=5"]
    run(single_command(tiny_config(tmp_path, char_store, char_tokenizer, "ref"), *steps))
    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "victim")
    proc = subprocess.Popen(single_command(cfg, *steps), env=cli_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_step(tmp_path / "victim", 12, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = max(step_losses(tmp_path / "victim"))
    assert killed_at < 40, "the run finished before it was killed"
    resumed = run(single_command(cfg, *steps, "--resume", "auto"))
    assert "resumed from step" in resumed.stderr
    ref, got = step_losses(tmp_path / "ref"), step_losses(tmp_path / "victim")
    assert sorted(got) == sorted(ref) == list(range(1, 41))
    assert got == ref  # bitwise: every float equal


def _engine(tmp_path, char_store, char_tokenizer):
    import deepspeed

    cfg = load_config(tiny_config(tmp_path, char_store, char_tokenizer, "eng"),
                      ["model.vocab_size=67"])
    torch.manual_seed(0)
    model = GPT(cfg.model)
    engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, cfg.train),
                                      config=deepspeed_config(cfg, 1))
    layout = current_layout(1, 1, 1, cfg.train.zero_stage)
    return engine, {"data": {"consumed_samples": 0}, "config": {}, "layout": layout}


def test_crash_during_save_keeps_the_previous_checkpoint(
    tmp_path, dist, char_store, char_tokenizer, monkeypatch
):
    engine, state = _engine(tmp_path, char_store, char_tokenizer)
    root = tmp_path / "ckpt"
    checkpoint.save(engine, root, 1, {**state, "step": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full (injected)")

    # DeepSpeed's shards are written, then the save dies before it completes.
    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError, match="injected"):
        checkpoint.save(engine, root, 2, {**state, "step": 2})
    monkeypatch.undo()
    assert checkpoint.latest_tag(root) == "step_00000001"
    assert not (root / "step_00000002").exists()
    assert (root / ".tmp-step_00000002").is_dir()
    plan = plan_resume(root, state["layout"])
    assert plan is not None and plan.tag == "step_00000001" and plan.same_layout
    # The next save replaces the leftover and moves `latest`.
    checkpoint.save(engine, root, 2, {**state, "step": 2})
    assert not (root / ".tmp-step_00000002").exists()
    assert checkpoint.latest_tag(root) == "step_00000002"
    assert checkpoint.read_state(root, "step_00000002")["step"] == 2


def test_retention_keeps_last_n_and_every_m(tmp_path, dist, char_store, char_tokenizer):
    engine, state = _engine(tmp_path, char_store, char_tokenizer)
    root = tmp_path / "ckpt"
    for step in range(1, 8):
        checkpoint.save(engine, root, step, {**state, "step": step}, keep_last=2, keep_every=3)
    assert checkpoint.complete_tags(root) == [
        "step_00000003", "step_00000006", "step_00000007"
    ]
    rng = torch.load(root / "step_00000007" / "rng_rank_00000.pt", weights_only=True)
    assert torch.equal(rng["cpu"], rng["cpu"]) and rng["cpu"].dtype == torch.uint8


@pytest.mark.slow
def test_resume_two_ranks_on_one(tmp_path, char_store, char_tokenizer):
    """ZeRO-1 state of 2 data-parallel ranks continues on 1 through a universal checkpoint."""
    run(deepspeed_command(tiny_config(tmp_path, char_store, char_tokenizer, "ref", micro=4,
                                      steps=8)))
    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "moved", micro=4, steps=4)
    run(deepspeed_command(cfg, "train.decay_steps=8"))  # the first half of the 8-step schedule
    proc = run(single_command(cfg, "train.steps=8", "train.micro_batch_size=8",
                              "--resume", "auto"))
    assert "universal checkpoint" in proc.stderr
    ref, got = step_losses(tmp_path / "ref"), step_losses(tmp_path / "moved")
    assert sorted(got) == list(range(1, 9))
    diffs = [abs(ref[s] - got[s]) for s in range(5, 9)]
    print(f"DP 2 -> 1 resume: max |loss diff| steps 5-8 = {max(diffs):.2e}")
    assert max(diffs) < 1e-4


@pytest.mark.slow
def test_resume_tensor_parallel_two_on_one(tmp_path, char_store, char_tokenizer):
    """A TP=2 checkpoint continues with TP=1 through a universal checkpoint."""
    common = ["model.vocab_multiple=2", "model.num_heads=2"]
    run(deepspeed_command(tiny_config(tmp_path, char_store, char_tokenizer, "ref", steps=8),
                          *common, "parallel.tensor=2"))
    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "moved", steps=4)
    run(deepspeed_command(cfg, *common, "parallel.tensor=2", "train.decay_steps=8"))
    proc = run(single_command(cfg, *common, "train.steps=8", "--resume", "auto"))
    assert "universal checkpoint" in proc.stderr
    ref, got = step_losses(tmp_path / "ref"), step_losses(tmp_path / "moved")
    diffs = [abs(ref[s] - got[s]) for s in range(5, 9)]
    print(f"TP 2 -> 1 resume: max |loss diff| steps 5-8 = {max(diffs):.2e}")
    assert max(diffs) < 1e-4
