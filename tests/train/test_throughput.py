"""MFU: achieved FLOP rate per device against the configured or known peak."""

from __future__ import annotations

import pytest
import torch

from modtrain.config import load_config
from modtrain.model.flops import model_flops, training_flops_per_token
from modtrain.train.throughput import device_peak_tflops, throughput_record


def test_mfu_is_achieved_rate_per_device_over_peak():
    record = throughput_record(tokens_per_s=2e5, flops_per_token=6e9, world_size=4,
                               peak_tflops=1000.0)
    assert record["tflops_per_device"] == pytest.approx(2e5 * 6e9 / 4 / 1e12)
    assert record["mfu"] == pytest.approx(0.3)
    assert "mfu" not in throughput_record(1.0, 1.0, 1, None)


def test_peak_is_configured_or_unknown_on_cpu():
    assert device_peak_tflops(123.0, torch.device("cpu")) == 123.0
    assert device_peak_tflops(0.0, torch.device("cpu")) is None


def test_training_flops_are_three_forwards_per_token():
    config = load_config(None, ["model.vocab_size=67", "model.mod.enabled=true"])
    seq = config.data.seq_length
    assert training_flops_per_token(config.model, seq) == 3 * model_flops(config.model, seq) / seq
