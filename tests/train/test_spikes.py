"""Loss-spike skipping: the detector's rule, and a corrupted batch skipped in a real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from modtrain.config import load_config
from modtrain.data.read.dataset import BatchLoader
from modtrain.errors import ModtrainError
from modtrain.train.spikes import SpikeDetector
from modtrain.train.trainer import train
from tests.train.helpers import tiny_config
from tests.train.test_fault_tolerance import _module_weights


def test_nothing_is_judged_before_the_window_is_full_then_z_decides():
    detector = SpikeDetector(window=4, threshold=3.0)
    for loss in (2.0, 2.1, 1.9):
        assert detector.judge({"loss": 100.0}) is None  # 0-3 values: no verdict
        detector.accept({"loss": loss})
    detector.accept({"loss": 2.0})  # window: 2.0 2.1 1.9 2.0, mean 2.0, std 0.0707
    assert detector.judge({"loss": 2.2}) is None  # z = 2.83
    spike = detector.judge({"loss": 2.25})  # z = 3.54
    assert spike is not None and spike.key == "loss"
    assert spike.zscore == pytest.approx(0.25 / np.sqrt(0.005))
    assert detector.judge({"loss": 0.5}) is None  # a fast fall is no spike
    assert detector.judge({"grad_norm": 9.0}) is None  # no grad norms seen yet


def _corrupt_steps(monkeypatch, steps: set[int]):
    """Replace every token of the given steps' batches with random ones, as a corrupt shard
    gives: a loss near the untrained model's, far above the recent ones."""
    original = BatchLoader.rows_of_step
    calls = {"n": 0}

    def rows_of_step(self, consumed):  # the n-th read is step n's (data.prefetch reads ahead)
        rows = original(self, consumed)
        calls["n"] += 1
        if calls["n"] in steps:
            rng = np.random.default_rng(calls["n"])
            rows = rng.integers(0, 60, size=rows.shape).astype(rows.dtype)
        return rows

    monkeypatch.setattr(BatchLoader, "rows_of_step", rows_of_step)


# Losses fall by about 0.07 a step here, so a corrupted batch lies 2.9-3.5 deviations above
# the last five steps (and an ordinary step below their mean).
SPIKES = ", spike_window: 5, spike_zscore: 2.0, spike_max_skips: 2, lr: 0.003"


def test_a_corrupted_batch_is_skipped_and_training_goes_on(
    tmp_path, dist, char_store, char_tokenizer, monkeypatch
):
    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "spike", steps=11,
                      extra=", save_interval: 1, keep_last: 0" + SPIKES)
    _corrupt_steps(monkeypatch, {9})
    train(load_config(cfg))
    records = [json.loads(line) for line in
               (tmp_path / "spike" / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r for r in records if "loss" in r}
    assert [s for s, r in by_step.items() if r.get("skipped")] == [9]
    assert by_step[9]["spike_zscore"] > 2.0 and by_step[9]["loss"] > by_step[8]["loss"]
    root = tmp_path / "spike" / "checkpoints"
    at_8, at_9 = _module_weights(root, "step_00000008"), _module_weights(root, "step_00000009")
    assert all(torch.equal(at_8[k], at_9[k]) for k in at_8)  # step 9 changed nothing
    at_10 = _module_weights(root, "step_00000010")
    assert any(not torch.equal(at_9[k], at_10[k]) for k in at_9)  # and training went on


def test_repeated_spikes_stop_the_run_naming_the_last_checkpoint(
    tmp_path, dist, char_store, char_tokenizer, monkeypatch
):
    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "spikes", steps=12,
                      extra=", save_interval: 4" + SPIKES)
    _corrupt_steps(monkeypatch, {9, 10})
    with pytest.raises(ModtrainError, match=r"2 loss spikes within 5 steps \(steps 9, 10\)"
                                            r".*step_00000008 is the last checkpoint") as err:
        train(load_config(cfg))
    assert "\n" not in str(err.value)


def test_spike_skipping_is_refused_with_pipeline_stages():
    with pytest.raises(ModtrainError, match="needs parallel.pipeline=1"):
        load_config(None, ["train.spike_window=10", "parallel.pipeline=2"])
