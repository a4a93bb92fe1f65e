"""--device and --dtype: what exists here is accepted, the rest is one line naming the fix."""

from __future__ import annotations

import pytest
import torch

from modtrain.errors import ModtrainError
from modtrain.inference.placement import resolve_device, resolve_dtype


def test_cpu_and_every_dtype_resolve():
    device = resolve_device("cpu")
    assert device == torch.device("cpu")
    assert [resolve_dtype(n, device) for n in ("fp32", "bf16", "fp16")] == [
        torch.float32, torch.bfloat16, torch.float16]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a CUDA-less host")
@pytest.mark.parametrize("name", ["cuda", "cuda:1"])
def test_cuda_without_a_device_is_one_line(name):
    with pytest.raises(ModtrainError, match="no CUDA device is visible.*use --device cpu"):
        resolve_device(name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_index_past_the_devices_is_one_line():
    with pytest.raises(ModtrainError, match="pick one of those"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_unknown_dtype_is_one_line():
    with pytest.raises(ModtrainError, match="use one of fp32, bf16, fp16"):
        resolve_dtype("fp8", torch.device("cpu"))
