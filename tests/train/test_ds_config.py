"""The DeepSpeed config modtrain derives for GPUs: precision of accumulation and reduction,
communication overlap, and what the real engine makes of it."""

from __future__ import annotations

import pytest
import torch

from modtrain.config import load_config
from modtrain.train.ds_config import BUCKET_ELEMENTS, deepspeed_config

TINY = ["model.num_layers=1", "model.num_heads=2", "model.hidden_size=16", "model.vocab_size=64",
        "data.seq_length=16", "model.max_seq_length=16", "train.global_batch_size=2"]


def _config(*overrides: str):
    return load_config(None, [*TINY, *overrides])


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_bf16_accumulates_and_reduces_in_fp32(stage):
    ds = deepspeed_config(_config("train.precision=bf16", f"train.zero_stage={stage}"), 1)
    assert ds["bf16"] == {"enabled": True}
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"}
    assert ds["communication_data_type"] == "fp32"


def test_bf16_in_bf16_when_asked():
    ds = deepspeed_config(_config("train.precision=bf16", "train.fp32_reduce=false"), 1)
    assert "data_types" not in ds and "communication_data_type" not in ds


def test_bf16_without_zero_reduces_in_fp32_and_warns_of_bf16_accumulation():
    """DeepSpeed has no bf16-weights / fp32-accumulation mix without ZeRO (it raises)."""
    config = _config("train.precision=bf16", "train.zero_stage=0")
    ds = deepspeed_config(config, 1)
    assert "data_types" not in ds and ds["communication_data_type"] == "fp32"
    assert any("train.zero_stage=1" in w for w in config.warnings())


def test_fp32_and_fp16_runs_keep_deepspeed_defaults():
    for precision in ("fp32", "fp16"):
        ds = deepspeed_config(_config(f"train.precision={precision}"), 1)
        assert "data_types" not in ds and "communication_data_type" not in ds


@pytest.mark.parametrize("stage, overlaps", [(0, False), (1, True), (2, True), (3, False)])
def test_gradient_reduction_overlaps_the_backward_on_cuda(stage, overlaps):
    zero = deepspeed_config(_config(f"train.zero_stage={stage}"), 1, cuda=True)[
        "zero_optimization"]
    assert zero["stage"] == stage
    assert zero.get("overlap_comm", False) == overlaps
    if overlaps:
        assert zero["contiguous_gradients"]
        assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == BUCKET_ELEMENTS
    # On CPU streams do not overlap: DeepSpeed's defaults.
    assert deepspeed_config(_config(f"train.zero_stage={stage}"), 1)["zero_optimization"] == {
        "stage": stage}


def test_the_engine_accumulates_bf16_gradients_in_fp32(dist):
    """The real engine (CPU, bf16, ZeRO 1): DeepSpeed's BF16 optimizer, fp32 accumulation and
    fp32 gradient communication, as the derived config asks."""
    import deepspeed

    from modtrain.model import GPT
    from modtrain.train.optim import build_optimizer

    config = _config("train.precision=bf16", "train.zero_stage=1")
    model = GPT(config.model, seed=1)
    engine, *_ = deepspeed.initialize(model=model, optimizer=build_optimizer(model, config.train),
                                      config=deepspeed_config(config, 1))
    assert engine.get_data_types() == (torch.bfloat16, torch.float32)
    assert engine.communication_data_type == torch.float32
    assert type(engine.optimizer).__name__ == "BF16_Optimizer"
