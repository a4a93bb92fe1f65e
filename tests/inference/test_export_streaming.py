"""`modtrain convert` streams: the same bytes as merging every tensor and writing them at
once, with host memory bounded by a fraction of the export."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
from safetensors.torch import save_file
from torch.profiler import ProfilerActivity, profile

from modtrain.checkpoint.read import reader as checkpoint_reader
from modtrain.checkpoint.read.reader import read_checkpoint
from modtrain.checkpoint.read.safe_load import load_weights_only
from modtrain.inference.export import DTYPES, convert_checkpoint
from modtrain.inference.hf_layout import to_hf_tensors
from tests.inference.conftest import train_run
from tests.train.helpers import deepspeed_launcher


def _converter_before_streaming(run: Path, out: Path, dtype: str) -> None:
    """What convert wrote before it streamed: every tensor merged (and copied), split and
    cast, then one save_file of them all."""
    ckpt = read_checkpoint(run)
    tensors = {name: tensor.clone() for name, tensor in ckpt.tensors.items()}
    hf = {k: v.to(DTYPES[dtype]) for k, v in to_hf_tensors(tensors, ckpt.config["model"]).items()}
    save_file(hf, str(out), metadata={"format": "pt"})


def _assert_same_bytes(run: Path, tmp_path: Path, dtype: str) -> Path:
    export = convert_checkpoint(run, tmp_path / f"export-{dtype}", dtype=dtype)
    _converter_before_streaming(run, tmp_path / "before.safetensors", dtype)
    assert (export / "model.safetensors").read_bytes() == (
        tmp_path / "before.safetensors").read_bytes()
    return export


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("run_name", ["mod_run", "dense_run"])  # ZeRO-1 and ZeRO-3
def test_streamed_export_has_the_bytes_of_the_whole_state_written_at_once(
        request, tmp_path, run_name, dtype):
    _assert_same_bytes(request.getfixturevalue(run_name), tmp_path, dtype)


def peak_host_bytes(fn, tag_dir: Path, monkeypatch) -> int:
    """The most bytes allocated at once while fn() runs: tensor storage (the profiler's
    memory events, in order) plus Python objects (tracemalloc's peak, in a second run: the
    profiler's own bookkeeping is Python objects). The checkpoint files are memory-mapped
    whole (file pages, which the kernel can drop; the profiler would count them as
    allocated): they are loaded before the measurement, and fn() reads them from there."""
    loaded = {str(path): load_weights_only(path) for path in tag_dir.glob("*.pt")}
    monkeypatch.setattr(checkpoint_reader, "load_weights_only", lambda path: loaded[str(path)])
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    now = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        now += event.self_cpu_memory_usage
        peak = max(peak, now)
    tracemalloc.start()
    try:
        fn()
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak + python_peak


@pytest.fixture(scope="module")
def zero1_dp2_run(tmp_path_factory, char_store, char_tokenizer) -> Path:
    """ZeRO-1 on 2 gloo ranks, width 512 (about 50 MB of fp32 weights): parameters
    straddle the two partitions."""
    return train_run(tmp_path_factory.mktemp("runs") / "zero1_dp2", char_store,
                     char_tokenizer, "train.zero_stage=1", "model.hidden_size=512",
                     "model.num_heads=8", "train.micro_batch_size=2", "train.steps=1",
                     "train.save_interval=1", "train.eval_interval=1", "train.log_interval=1",
                     launcher=deepspeed_launcher())


@pytest.mark.slow
def test_zero1_two_rank_export_is_byte_identical(tmp_path, zero1_dp2_run):
    ckpt = read_checkpoint(zero1_dp2_run)
    assert (ckpt.zero_stage, ckpt.data_parallel) == (1, 2)
    _assert_same_bytes(zero1_dp2_run, tmp_path, "fp32")


@pytest.mark.slow
def test_convert_peak_memory_is_below_one_and_a_half_exports(tmp_path, monkeypatch,
                                                             zero1_dp2_run):
    out = tmp_path / "export"
    tag_dir = checkpoint_reader.resolve_checkpoint(zero1_dp2_run)
    peak = peak_host_bytes(lambda: convert_checkpoint(zero1_dp2_run, out), tag_dir, monkeypatch)
    size = (out / "model.safetensors").stat().st_size
    print(f"convert peak host memory {peak / 2**20:.1f} MiB for a {size / 2**20:.1f} MiB "
          f"export ({peak / size:.2f}x)")
    assert size > 40 * 2**20
    assert peak < 1.5 * size
