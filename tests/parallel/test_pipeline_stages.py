"""The pipeline's layer specs carry train.recompute into each block layer."""

from __future__ import annotations

import pytest

from modtrain.config import load_config
from modtrain.model.pipeline_layers import BlockLayer
from modtrain.model.tensor_split import TensorSlice
from modtrain.parallel.pipeline_stages import pipeline_layer_specs


@pytest.mark.parametrize("mode", ["selective", "full"])
def test_block_layers_recompute_in_the_configured_mode(dist, mode):
    config = load_config(None, ["model.vocab_size=64", "model.num_layers=4",
                                "model.hidden_size=32", "model.num_heads=2",
                                f"train.recompute={mode}", "train.recompute_layers=every_2"])
    layers = [spec.build() for spec in pipeline_layer_specs(config, TensorSlice())
              if spec.typename is BlockLayer]
    assert [layer.block.recompute for layer in layers] == [mode, "none", mode, "none"]
