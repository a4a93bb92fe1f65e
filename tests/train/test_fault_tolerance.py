"""Preemption signals and non-finite losses."""

from __future__ import annotations

import json
import signal
import subprocess

import psutil
import pytest
import torch

from modtrain.checkpoint.tags import complete_tags, latest_tag, read_state
from modtrain.config import load_config
from modtrain.errors import ModtrainError
from modtrain.model import GPT
from modtrain.train.signals import EXIT_REQUEUE
from modtrain.train.trainer import train
from tests.checkpoint.engine.test_save_load import _wait_for_step
from tests.conftest import cli_env
from tests.train.helpers import deepspeed_command, step_losses, tiny_config


@pytest.mark.slow
def test_signal_on_one_rank_saves_on_all_and_exits_for_requeue(
    tmp_path, char_store, char_tokenizer
):
    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "pre", micro=4, steps=10_000)
    launcher = subprocess.Popen(deepspeed_command(cfg), env=cli_env(), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for_step(tmp_path / "pre", 3, launcher)
    ranks = [p for p in psutil.Process(launcher.pid).children(recursive=True)
             if "modtrain" in " ".join(p.cmdline()) and "LOCAL_RANK" in p.environ()]
    rank1 = [p for p in ranks if p.environ()["LOCAL_RANK"] == "1"]
    assert len(ranks) == 2 and len(rank1) == 1
    rank1[0].send_signal(signal.SIGUSR1)  # only rank 1 is signalled
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == EXIT_REQUEUE, stderr[-3000:]
    root = tmp_path / "pre" / "checkpoints"
    tag = latest_tag(root)
    saved_step = read_state(root, tag).step
    assert saved_step == max(step_losses(tmp_path / "pre")) < 10_000
    # Both ranks wrote their part of the same step.
    assert {p.name for p in (root / tag).glob("rng_rank_*.pt")} == {
        "rng_rank_00000.pt", "rng_rank_00001.pt"}
    assert len(list((root / tag).glob("*optim_states.pt"))) == 2
    assert "stopped by signal" in stderr


def _poisoned_forward(monkeypatch, bad_calls: set[int]):
    """Make the loss of the given forward calls (1-based) NaN, as a diverging run would."""
    original = GPT.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] in bad_calls:
                out.loss = out.loss * float("nan")
                out.lm_loss = out.lm_loss * float("nan")
        return out

    monkeypatch.setattr(GPT, "forward", forward)


def _module_weights(root, tag):
    state = torch.load(root / tag / "mp_rank_00_model_states.pt", weights_only=False)
    return state["module"]


def test_nonfinite_loss_skips_the_step_then_stops(
    tmp_path, dist, char_store, char_tokenizer, monkeypatch
):
    cfg_path = tiny_config(tmp_path, char_store, char_tokenizer, "nan", steps=12,
                           extra=", save_interval: 5, max_nonfinite_steps: 3")
    config = load_config(cfg_path)
    # Step 3 is bad once (skipped, training goes on); steps 6, 7, 8 are bad in a row.
    _poisoned_forward(monkeypatch, {3, 6, 7, 8})
    with pytest.raises(ModtrainError, match=r"non-finite loss on 3 consecutive steps \(6-8\)"):
        train(config)
    records = [json.loads(line) for line in
               (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in records if "loss" in r or "skipped" in r}
    assert by_step[3]["skipped"] and by_step[3]["loss"] is None
    assert not by_step[4].get("skipped") and by_step[4]["loss"] is not None
    root = tmp_path / "nan" / "checkpoints"
    assert latest_tag(root) == "step_00000008"
    # Skipped steps changed nothing: the stop checkpoint holds the weights of step 5.
    at_8, at_5 = _module_weights(root, "step_00000008"), _module_weights(root, "step_00000005")
    assert at_8.keys() == at_5.keys()
    assert all(torch.equal(at_8[k], at_5[k]) for k in at_5)
    assert all(torch.isfinite(v).all() for v in at_8.values())


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by inf: a finite loss whose
    gradients overflow, as a far too large learning rate gives."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def _overflowing_backward(monkeypatch, bad_calls: set[int]):
    original = GPT.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] in bad_calls:
                out.loss = _InfiniteGradient.apply(out.loss)
        return out

    monkeypatch.setattr(GPT, "forward", forward)


def test_updates_the_optimizer_skipped_are_counted_and_keep_the_good_checkpoints(
    tmp_path, dist, char_store, char_tokenizer, monkeypatch
):
    """Finite losses, non-finite gradients: DeepSpeed (ZeRO 1, its clipping) skips each
    update. Before, modtrain logged the finite loss, kept saving and pruning, and exited 0."""
    cfg_path = tiny_config(tmp_path, char_store, char_tokenizer, "ovf", steps=12,
                           extra=", save_interval: 2, keep_last: 1, max_nonfinite_steps: 3")
    _overflowing_backward(monkeypatch, {5, 6, 7})
    with pytest.raises(ModtrainError, match=r"no optimizer update on 3 consecutive steps "
                                            r"\(5-7\)"):
        train(load_config(cfg_path))
    records = [json.loads(line) for line in
               (tmp_path / "ovf" / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in records if "loss" in r}
    assert [s for s, r in by_step.items() if r.get("skipped")] == [5, 6, 7]
    assert all(by_step[s]["loss"] is not None for s in (5, 6, 7))  # the losses were finite
    root = tmp_path / "ovf" / "checkpoints"
    # keep_last 1 pruned up to step 4; the saves during the streak (6, and 7 at the stop)
    # pruned nothing, so step 4, the last good one, is still there.
    assert complete_tags(root) == ["step_00000004", "step_00000006",
                                              "step_00000007"]
    at_7, at_4 = _module_weights(root, "step_00000007"), _module_weights(root, "step_00000004")
    assert all(torch.equal(at_7[k], at_4[k]) for k in at_4)
