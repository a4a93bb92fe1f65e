"""The pipeline's layer specs carry train.recompute into each block layer; its stages are
built on the topology's device with GPT's weights."""

from __future__ import annotations

import pytest
import torch

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.model.param_table import gpt_name
from modtrain.model.pipeline_layers import BlockLayer
from modtrain.model.tensor_split import TensorSlice
from modtrain.parallel.pipeline_stages import build_pipeline, pipeline_layer_specs


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_block_layers_recompute_in_the_configured_mode(dist, mode):
    config = load_config(None, ["model.vocab_size=64", "model.num_layers=4",
                                "model.hidden_size=32", "model.num_heads=2",
                                f"train.recompute={mode}", "train.recompute_layers=every_2"])
    layers = [spec.build() for spec in pipeline_layer_specs(config, TensorSlice())
              if spec.typename is BlockLayer]
    assert [layer.block.recompute for layer in layers] == [mode, "none", mode, "none"]


@pytest.mark.parametrize("tied", [True, False])
def test_stages_are_built_on_the_topology_device_with_gpt_weights(dist, tied):
    """build_pipeline builds its layers on topo.device whatever the default device around
    it ("meta" here): before, DeepSpeed's PipelineModule built them on the default device
    (host memory) and then moved itself to the accelerator (here: out of meta, which fails).
    The weights are GPT's, by name."""
    config = load_config(None, ["model.vocab_size=64", "model.num_layers=3",
                                "model.hidden_size=32", "model.num_heads=2",
                                "model.mod.enabled=true", f"model.tie_embeddings={tied}"])
    with torch.device("meta"):
        pipe, _ = build_pipeline(config, dist)
    reference = dict(GPT(config.model, seed=config.run.seed).named_parameters())
    names = [gpt_name(n, config.model.num_layers) for n, _ in pipe.named_parameters()]
    assert sorted(names) == sorted(reference)
    for (name, weight), gpt in zip(pipe.named_parameters(), names, strict=True):
        assert weight.device == dist.device, name
        assert torch.equal(weight, reference[gpt]), name
