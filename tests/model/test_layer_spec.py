"""megatron-core's CPU-initialisation path allocates without a device, so every layer
modtrain builds (GPT's and each pipeline layer) lands on the device it is built under:
the engine builds a rank's model on its accelerator, not in host memory."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.model.tensor_split import TensorSlice
from modtrain.parallel.pipeline_stages import pipeline_layer_specs

TINY = ["model.vocab_size=64", "model.num_layers=2", "model.hidden_size=32",
        "model.num_heads=2"]
VARIANTS = {"dense": [], "mod": ["model.mod.enabled=true"],
            "moe": ["model.moe.enabled=true", "model.moe.noop_experts=1"],
            "untied": ["model.tie_embeddings=false"]}


def off_device(module: nn.Module, device: str, skip: tuple[str, ...] = ()) -> list[str]:
    """Names of the parameters, buffers and tensor attributes of `module` and its children
    not on `device` (attributes named in `skip` left out)."""
    found = [n for n, t in [*module.named_parameters(), *module.named_buffers()]
             if t.device.type != device]
    for prefix, child in module.named_modules():
        for key, value in vars(child).items():
            if key in ("_parameters", "_buffers", "_modules") or key in skip:
                continue
            found += [f"{prefix}.{key}" for t in tree_leaves(value)
                      if isinstance(t, torch.Tensor) and t.device.type != device]
    return found


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_gpt_tensor_honours_the_build_device(dist, variant):
    config = load_config(None, [*TINY, *VARIANTS[variant]])
    model = GPT(config.model, build_context=lambda: torch.device("meta"))
    assert len(list(model.parameters())) > 10
    # The RoPE table is built outside the layers (fp32) and moves to the input's device.
    assert off_device(model, "meta", skip=("_rope",)) == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pipeline_layer_honours_the_build_device(dist, variant):
    config = load_config(None, [*TINY, *VARIANTS[variant]])
    with torch.device("meta"):
        layers = [spec.build() for spec in pipeline_layer_specs(config, TensorSlice())]
    assert len(layers) == config.model.num_layers + 3
    for layer in layers:
        assert off_device(layer, "meta") == [], type(layer).__name__
