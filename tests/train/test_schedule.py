"""Every train.schedule against its formula, the scheduler that applies it, and resume."""

from __future__ import annotations

import io
import math

import pytest
import torch

from modtrain.config import load_config
from modtrain.errors import ModtrainError
from modtrain.train.optim import build_optimizer, build_scheduler, restore_group_settings
from modtrain.train.schedule import check_continues, lr_at

LR, MIN, WARM, STEPS = 1e-3, 1e-4, 4, 20


def _train(*overrides: str):
    return load_config(None, [f"train.steps={STEPS}", f"train.warmup_steps={WARM}",
                              f"train.lr={LR}", f"train.min_lr={MIN}", *overrides]).train


def _expected(schedule: str, shape: str, step: int) -> tuple[str, float]:
    """(phase, lr) written out from the formulas, independently of modtrain's code."""
    if step < WARM:
        return "warmup", LR * (step + 1) / (WARM + 1)
    if schedule == "constant":
        return "stable", LR
    start = 12 if schedule == "wsd" else WARM
    if step < start:
        return "stable", LR
    if step >= STEPS:
        return "end", MIN
    p = (step - start) / (STEPS - start)
    left = {"linear": 1 - p, "cosine": (1 + math.cos(math.pi * p)) / 2, "1-sqrt": 1 - p ** 0.5}
    return "decay", MIN + left[shape] * (LR - MIN)


@pytest.mark.parametrize("schedule,shape", [
    ("cosine", "cosine"), ("linear", "linear"), ("constant", None),
    ("wsd", "linear"), ("wsd", "cosine"), ("wsd", "1-sqrt"),
])
def test_each_schedule_follows_its_formula_at_every_step(schedule, shape):
    t = _train(f"train.schedule={schedule}", "train.decay_start=12",
               f"train.decay_shape={shape or 'linear'}")
    phases = set()
    for step in range(STEPS + 5):
        phase, want = _expected(schedule, shape, step)
        phases.add(phase)
        assert lr_at(step, t) == pytest.approx(want, rel=1e-12, abs=0), (phase, step)
    expected = {"warmup", "stable"} if schedule == "constant" else (
        {"warmup", "decay", "end"} | ({"stable"} if schedule == "wsd" else set()))
    assert phases == expected


def test_wsd_decays_over_the_last_decay_fraction_by_default():
    t = _train("train.schedule=wsd", "train.decay_fraction=0.25")  # steps 15..20 decay
    assert lr_at(14, t) == LR and lr_at(15, t) == LR and lr_at(16, t) < LR
    assert lr_at(STEPS, t) == MIN


def _old_lambda(t):
    """The schedule before train.schedule existed (LambdaLR of warm-up and cosine)."""
    def old_lr_at(step):
        if step < t.warmup_steps:
            return t.lr * (step + 1) / (t.warmup_steps + 1)
        span = max(1, (t.decay_steps or t.steps) - t.warmup_steps)
        progress = min(1.0, (step - t.warmup_steps) / span)
        return t.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (t.lr - t.min_lr)
    return lambda step: old_lr_at(step) / t.lr


def _lrs(optimizer, scheduler, steps: int) -> list[float]:
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def _optimizer(t):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    return build_optimizer(model, t)


def test_default_cosine_is_the_previous_schedule_bit_for_bit():
    t = load_config(None, []).train  # the defaults: 2000 steps, 100 warm-up
    old_opt, new_opt = _optimizer(t), _optimizer(t)
    old = _lrs(old_opt, torch.optim.lr_scheduler.LambdaLR(old_opt, _old_lambda(t)), t.steps + 2)
    new = _lrs(new_opt, build_scheduler(new_opt, t), t.steps + 2)
    assert new == old  # every float equal
    assert new == [lr_at(s, t) for s in range(t.steps + 2)]  # and the pure function says so


def _saved_and_reloaded(scheduler) -> dict:
    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("schedule", ["cosine", "wsd", "linear", "constant"])
@pytest.mark.parametrize("at", [1, 3, 7, 12, 13, 19])
def test_resume_at_any_step_continues_the_same_rates(schedule, at):
    t = _train(f"train.schedule={schedule}", "train.decay_start=12")
    opt = _optimizer(t)
    whole = _lrs(opt, build_scheduler(opt, t), STEPS + 3)
    first_opt = _optimizer(t)
    first_sched = build_scheduler(first_opt, t)
    head = _lrs(first_opt, first_sched, at)
    # What DeepSpeed does on resume: a fresh scheduler loads the saved state, then the
    # trainer puts back the config's settings for the saved step.
    opt = _optimizer(t)
    sched = build_scheduler(opt, t)
    sched.load_state_dict(_saved_and_reloaded(first_sched))
    restore_group_settings(opt, t, at)
    assert head + _lrs(opt, sched, STEPS + 3 - at) == whole  # bitwise


def test_an_anneal_branch_equals_the_run_that_decayed_there():
    stable = _train("train.schedule=wsd", "train.steps=100")  # decays from step 80
    branch = _train("train.schedule=wsd", "train.decay_start=10", "train.steps=16")
    check_continues(stable, branch, 10)  # allowed: nothing before step 10 changes
    opt = _optimizer(stable)
    sched = build_scheduler(opt, stable)
    _lrs(opt, sched, 10)
    opt = _optimizer(branch)
    resumed = build_scheduler(opt, branch)
    resumed.load_state_dict(_saved_and_reloaded(sched))
    restore_group_settings(opt, branch, 10)
    opt2 = _optimizer(branch)
    assert _lrs(opt, resumed, 8) == _lrs(opt2, build_scheduler(opt2, branch), 18)[10:]


@pytest.mark.parametrize("override", ["train.decay_start=8", "train.lr=2e-3",
                                      "train.warmup_steps=3", "train.schedule=cosine"])
def test_a_resume_that_rewrites_the_trained_schedule_is_refused(override):
    saved = _train("train.schedule=wsd", "train.decay_start=12")
    changed = _train("train.schedule=wsd", "train.decay_start=12", override)
    with pytest.raises(ModtrainError, match="another learning-rate schedule") as e:
        check_continues(saved, changed, 10)
    assert "\n" not in str(e.value) and override.split("=")[0] in str(e.value)


def test_keys_that_shape_only_the_future_may_change_on_resume():
    saved = _train("train.schedule=constant")
    for override in ("train.schedule=wsd", "train.decay_start=10", "train.steps=30",
                     "train.decay_shape=cosine"):
        check_continues(saved, _train("train.schedule=wsd", "train.decay_start=10",
                                      override), 10)


@pytest.mark.parametrize("overrides,match", [
    (["train.schedule=step"], "train.schedule='step'; use cosine"),
    (["train.decay_shape=exp"], "train.decay_shape='exp'"),
    (["train.schedule=wsd", "train.decay_start=2"], "must start at or after"),
    (["train.schedule=wsd", "train.decay_start=20"], "before its end"),
    (["train.schedule=wsd", "train.decay_fraction=0"], r"must be in \(0, 1\]"),
    (["train.lr=0"], r"train.lr=0.0 is outside \(0, inf\)"),
])
def test_bad_schedule_settings_name_the_key(overrides, match):
    with pytest.raises(ModtrainError, match=match):
        _train(*overrides)
