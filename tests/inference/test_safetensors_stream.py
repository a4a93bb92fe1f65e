"""The streaming safetensors writer writes what safetensors' save_file writes, byte for byte."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from modtrain.inference.safetensors_stream import SafetensorsWriter


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_tensors_written_in_any_order_give_save_files_bytes(tmp_path, dtype):
    g = torch.Generator().manual_seed(0)
    tensors = {name: torch.randn(shape, generator=g).to(dtype) for name, shape in [
        ("model.layers.1.mlp.up_proj.weight", (6, 5)), ("lm_head.weight", (7, 5)),
        ("model.norm.weight", (5,)), ("model.layers.0.router.scale", ()),
        ("model.embed_tokens.weight", (3, 1, 5))]}
    save_file(tensors, str(tmp_path / "ref.safetensors"), metadata={"format": "pt"})
    shapes = {k: tuple(v.shape) for k, v in tensors.items()}
    with SafetensorsWriter(tmp_path / "out.safetensors", shapes, dtype,
                           metadata={"format": "pt"}) as writer:
        for name in reversed(list(tensors)):
            writer.write(name, tensors[name])
    assert (tmp_path / "out.safetensors").read_bytes() == (
        tmp_path / "ref.safetensors").read_bytes()


def test_a_tensor_never_written_leaves_no_file(tmp_path):
    path = tmp_path / "out.safetensors"
    with pytest.raises(ValueError, match="never written"), \
            SafetensorsWriter(path, {"a": (2,), "b": (3,)}, torch.float32) as writer:
        writer.write("a", torch.zeros(2))
    assert not path.exists()


def test_a_tensor_of_another_shape_or_dtype_is_refused(tmp_path):
    with SafetensorsWriter(tmp_path / "out.safetensors", {"a": (2,)}, torch.float32) as writer:
        with pytest.raises(ValueError, match="the header says"):
            writer.write("a", torch.zeros(3))
        with pytest.raises(ValueError, match="the header says"):
            writer.write("a", torch.zeros(2, dtype=torch.float16))
        writer.write("a", torch.zeros(2))
