"""Atomic saves, retention, and resume exactly where a killed run stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from modtrain.checkpoint.engine import save_load
from modtrain.checkpoint.engine.resume import current_layout, plan_resume
from modtrain.checkpoint.format import CheckpointState
from modtrain.checkpoint.tags import complete_tags, latest_tag, read_state
from modtrain.config import load_config
from modtrain.errors import ModtrainError
from modtrain.model import GPT
from modtrain.train.ds_config import deepspeed_config
from modtrain.train.optim import build_optimizer
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


def _engine(tmp_path, char_store, char_tokenizer, *overrides: str):
    import deepspeed

    cfg = load_config(tiny_config(tmp_path, char_store, char_tokenizer, "eng"),
                      ["model.vocab_size=67", *overrides])
    torch.manual_seed(0)
    model = GPT(cfg.model)
    engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, cfg.train),
                                      config=deepspeed_config(cfg, 1))
    layout = current_layout(1, 1, 1, cfg.train.zero_stage)
    return engine, CheckpointState(step=0, data={"consumed_samples": 0}, config={}, layout=layout)


def test_crash_during_save_keeps_the_previous_checkpoint(
    tmp_path, dist, char_store, char_tokenizer, monkeypatch
):
    engine, state = _engine(tmp_path, char_store, char_tokenizer)
    root = tmp_path / "ckpt"
    save_load.save(engine, root, replace(state, step=1))

    def crash(*args, **kwargs):
        raise OSError("disk full (injected)")

    # DeepSpeed's shards are written, then the save dies before it completes.
    monkeypatch.setattr(save_load.torch, "save", crash)
    with pytest.raises(OSError, match="injected"):
        save_load.save(engine, root, replace(state, step=2))
    monkeypatch.undo()
    assert latest_tag(root) == "step_00000001"
    assert not (root / "step_00000002").exists()
    assert (root / ".tmp-step_00000002").is_dir()
    plan = plan_resume(root, state.layout)
    assert plan is not None and plan.tag == "step_00000001" and plan.same_layout
    # The next save replaces the leftover and moves `latest`.
    save_load.save(engine, root, replace(state, step=2))
    assert not (root / ".tmp-step_00000002").exists()
    assert latest_tag(root) == "step_00000002"
    assert read_state(root, "step_00000002").step == 2


def test_retention_keeps_last_n_and_every_m(tmp_path, dist, char_store, char_tokenizer):
    engine, state = _engine(tmp_path, char_store, char_tokenizer)
    root = tmp_path / "ckpt"
    for step in range(1, 8):
        save_load.save(engine, root, replace(state, step=step), keep_last=2, keep_every=3)
    assert complete_tags(root) == [
        "step_00000003", "step_00000006", "step_00000007"
    ]
    rng = torch.load(root / "step_00000007" / "rng_rank_00000.pt", weights_only=True)
    assert torch.equal(rng["cpu"], rng["cpu"]) and rng["cpu"].dtype == torch.uint8


def test_saving_a_step_again_drops_its_stale_universal_copies(
    tmp_path, dist, char_store, char_tokenizer
):
    engine, state = _engine(tmp_path, char_store, char_tokenizer)
    root = tmp_path / "ckpt"
    save_load.save(engine, root, replace(state, step=1))
    for pipeline in (False, True):  # as a resume on another layout would have left them
        (root / save_load.universal_tag("step_00000001", pipeline) / "zero").mkdir(parents=True)
    save_load.save(engine, root, replace(state, step=1))  # e.g. re-reached after a rewind
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["step_00000001"]


def test_checkpoint_universal_command_names_parameters_for_the_target(
    tmp_path, char_store, char_tokenizer
):
    run(single_command(tiny_config(tmp_path, char_store, char_tokenizer, "run", steps=3)))
    root = tmp_path / "run" / "checkpoints"
    cmd = [sys.executable, "-m", "modtrain", "checkpoint", "universal", str(root)]
    out = run(cmd + ["--pipeline", "2"]).stdout.strip().splitlines()[-1]
    assert out == str(root / ".universal-pipeline-step_00000003")
    zero = {p.name for p in (root / ".universal-pipeline-step_00000003" / "zero").iterdir()}
    assert {"tied_modules.embed.embedding.weight", "1.block.layer.mlp.linear_fc1.weight",
            "2.block.router.proj.weight", "3.final_norm.weight"} <= zero
    run(cmd)  # flat names, for a run without pipeline parallelism
    flat = {p.name for p in (root / ".universal-step_00000003" / "zero").iterdir()}
    assert {"embedding.weight", "blocks.1.router.proj.weight", "final_norm.weight"} <= flat
    assert len(flat) == len(zero) and not (root / "latest_universal").exists()
    missing = run(cmd + ["--tag", "step_00000009"], expect=2).stderr.strip().splitlines()
    assert missing == [f"modtrain: error: {root / 'step_00000009'} is not a complete modtrain "
                       "checkpoint; pick one of: step_00000003"]


# Launchers of the layouts a run may move between; all share one global batch of 8.
LAUNCH = {
    "1": lambda cfg, *o: single_command(cfg, *o),
    "dp2": lambda cfg, *o: deepspeed_command(cfg, "train.micro_batch_size=4", *o),
    "tp2": lambda cfg, *o: deepspeed_command(cfg, "parallel.tensor=2", *o),
    "pp2": lambda cfg, *o: deepspeed_command(cfg, "parallel.pipeline=2", *o),
    "tp2pp2": lambda cfg, *o: deepspeed_command(
        cfg, "parallel.tensor=2", "parallel.pipeline=2", *o, nproc=4),
    "dp2-zero3": lambda cfg, *o: deepspeed_command(
        cfg, "train.micro_batch_size=4", "train.zero_stage=3", *o),
    "tp2-zero2": lambda cfg, *o: deepspeed_command(cfg, "parallel.tensor=2",
                                                   "train.zero_stage=2", *o),
    "1-zero3": lambda cfg, *o: single_command(cfg, "train.zero_stage=3", *o),
    "tp2-sp": lambda cfg, *o: deepspeed_command(cfg, "parallel.tensor=2",
                                                "parallel.sequence_parallel=true", *o),
}
COMMON = ["model.vocab_multiple=2"]  # the vocabulary splits evenly over 2 tensor ranks


@pytest.fixture(scope="module")
def reference_losses(tmp_path_factory, char_store, char_tokenizer) -> dict[int, float]:
    """8 uninterrupted steps in one process: what every layout change must continue."""
    root = tmp_path_factory.mktemp("reference")
    run(single_command(tiny_config(root, char_store, char_tokenizer, "ref", steps=8), *COMMON))
    return step_losses(root / "ref")


@pytest.mark.slow
@pytest.mark.parametrize("before,after", [
    ("dp2", "1"), ("tp2", "1"), ("pp2", "1"), ("1", "pp2"), ("tp2pp2", "dp2"),
    ("dp2", "tp2-zero2"), ("dp2-zero3", "1-zero3"),
])
def test_resume_on_another_layout(tmp_path, char_store, char_tokenizer, reference_losses,
                                  before, after):
    """4 steps on one layout, 4 more on another through a universal checkpoint: the losses
    continue the uninterrupted run's (layouts agree with one process to ~5e-7)."""
    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "moved", steps=4)
    run(LAUNCH[before](cfg, *COMMON, "train.decay_steps=8"))  # first half of the schedule
    proc = run(LAUNCH[after](cfg, *COMMON, "train.steps=8", "--resume", "auto"))
    assert "resumed from step 4 (layout changed: universal checkpoint)" in proc.stderr
    assert "modtrain checkpoint universal" in proc.stderr  # how to convert ahead next time
    got = step_losses(tmp_path / "moved")
    assert sorted(got) == list(range(1, 9))
    diffs = [abs(reference_losses[s] - got[s]) for s in range(5, 9)]
    print(f"{before} -> {after} resume: max |loss diff| steps 5-8 = {max(diffs):.2e}")
    assert max(diffs) < 1e-4
    checkpoints = tmp_path / "moved" / "checkpoints"
    assert not (checkpoints / "latest_universal").exists()
    assert latest_tag(checkpoints) == "step_00000008"


@pytest.mark.slow
def test_resume_into_and_out_of_sequence_parallelism(tmp_path, char_store, char_tokenizer,
                                                     reference_losses):
    """Sequence parallelism changes no parameter or shard: a TP=2 checkpoint saved with it
    resumes without it and back, on the same layout (no universal copy), and the losses
    continue those of one process."""
    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "sp", steps=3)
    run(LAUNCH["tp2-sp"](cfg, *COMMON, "train.decay_steps=8"))
    proc = run(LAUNCH["tp2"](cfg, *COMMON, "train.steps=6", "train.decay_steps=8",
                             "--resume", "auto"))
    assert "resumed from step 3" in proc.stderr and "universal" not in proc.stderr
    proc = run(LAUNCH["tp2-sp"](cfg, *COMMON, "train.steps=8", "--resume", "auto"))
    assert "resumed from step 6" in proc.stderr and "universal" not in proc.stderr
    got = step_losses(tmp_path / "sp")
    assert sorted(got) == list(range(1, 9))
    diffs = [abs(reference_losses[s] - got[s]) for s in range(1, 9)]
    print(f"TP=2 +SP -> TP=2 -> +SP: max |loss diff| steps 1-8 = {max(diffs):.2e}")
    assert max(diffs) < 1e-4


def test_resuming_into_another_model_shape_is_one_line(tmp_path, dist, char_store,
                                                       char_tokenizer):
    engine, state = _engine(tmp_path, char_store, char_tokenizer)
    root = tmp_path / "ckpt"
    tag = save_load.save(engine, root, replace(state, step=1), 3, 0)
    wider, _ = _engine(tmp_path, char_store, char_tokenizer, "model.hidden_size=48")
    with pytest.raises(ModtrainError) as info:
        save_load.load(wider, root, tag, True)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{root / tag} was saved from another model shape: ")
    assert "[67, 32] -> [67, 48]" in message and "more" in message
