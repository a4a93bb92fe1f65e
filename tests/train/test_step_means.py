"""The per-step values EngineStep reads from the device in one transfer."""

from __future__ import annotations

import math

import pytest
import torch

from modtrain.parallel.collectives import summarize_step
from modtrain.train.steps import _step_values


def _step_means(lm, total, stats):
    """(every loss finite, means), as EngineStep reads them: one summary, one process."""
    nonfinite, values = _step_values(lm, total, stats)
    summary = summarize_step([nonfinite], values, torch.device("cpu"))
    return not summary.any_nonfinite, summary.means


def test_means_over_micro_batches_and_the_finite_flag():
    lm = [torch.tensor(2.0), torch.tensor(4.0)]
    total = [torch.tensor(2.5), torch.tensor(4.5)]
    stats = [{"routed_frac/layer1": torch.tensor(0.25), "aux": torch.tensor(1.0)},
             {"routed_frac/layer1": torch.tensor(0.75), "aux": torch.tensor(3.0)}]
    finite, means = _step_means(lm, total, stats)
    assert finite
    assert means == pytest.approx({"loss": 3.0, "total_loss": 3.5, "aux": 2.0,
                                   "routed_frac/layer1": 0.5})


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_one_non_finite_total_loss_makes_the_step_non_finite(bad):
    lm = [torch.tensor(1.0), torch.tensor(1.0)]
    finite, means = _step_means(lm, [torch.tensor(1.0), torch.tensor(bad)], [{}, {}])
    assert not finite
    assert not math.isfinite(means["total_loss"]) and means["loss"] == 1.0


def test_no_statistics_dense_model():
    finite, means = _step_means([torch.tensor(1.5)], [torch.tensor(1.5)], [{}])
    assert finite and means == {"loss": 1.5, "total_loss": 1.5}


def test_a_statistic_missing_from_a_micro_batch_counts_zero():
    stats = [{"aux": torch.tensor(4.0)}, {}]
    _, means = _step_means([torch.tensor(1.0)] * 2, [torch.tensor(1.0)] * 2, stats)
    assert means["aux"] == 2.0
