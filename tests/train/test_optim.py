"""Optimizer groups, schedule, and the settings a resumed run restores."""

from __future__ import annotations

import pytest
import torch

from modtrain.config import load_config
from modtrain.train.optim import (
    build_optimizer,
    lr_at,
    restore_group_settings,
    untie_step_counters,
)


def _train_config(*overrides: str):
    return load_config(None, ["train.steps=10", "train.warmup_steps=2", "train.lr=1e-3",
                              "train.min_lr=1e-4", "train.weight_decay=0.1", *overrides]).train


def _model() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))


def test_weight_decay_only_on_matrices():
    opt = build_optimizer(_model(), _train_config())
    decay, no_decay = opt.param_groups
    assert [p.dim() for p in decay["params"]] == [2]
    assert all(p.dim() == 1 for p in no_decay["params"]) and len(no_decay["params"]) == 3
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.1, 0.0)


def test_schedule_warms_up_then_decays_to_min_lr():
    t = _train_config()
    assert lr_at(0, t) == pytest.approx(1e-3 / 3) and lr_at(2, t) == pytest.approx(1e-3)
    assert lr_at(10, t) == pytest.approx(1e-4) and lr_at(6, t) == pytest.approx(5.5e-4)


def test_restore_puts_back_what_a_loader_overwrote():
    t = _train_config()
    opt = build_optimizer(_model(), t)
    for group in opt.param_groups:  # as DeepSpeed's ZeRO-3 universal loader leaves them
        group.update(weight_decay=0.1, lr=123.0)
    restore_group_settings(opt, t, 6)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(5.5e-4)] * 2


def test_untied_step_counters_advance_once_per_step():
    model = _model()
    opt = build_optimizer(model, _train_config())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    shared = torch.tensor(4.0)  # one tensor in every state, as the ZeRO-3 loader leaves it
    for state in opt.state.values():
        state["step"] = shared
    untie_step_counters(opt)
    opt.step()
    assert [float(s["step"]) for s in opt.state.values()] == [5.0] * len(opt.state)
