"""configs/gpu_*.yaml validate, sit in their parameter class, and pair dense with MoD."""

from __future__ import annotations

import pytest

from modtrain.config import load_config
from modtrain.model.param_table import parameter_count

CLASSES = {"125m": (100e6, 150e6), "350m": (300e6, 400e6)}


@pytest.mark.parametrize("size", list(CLASSES))
def test_gpu_configs_validate_in_their_class(size):
    low, high = CLASSES[size]
    dense = load_config(f"configs/gpu_{size}_dense.yaml")
    mod = load_config(f"configs/gpu_{size}_mod.yaml")
    for config in (dense, mod):
        assert config.train.precision == "bf16"
        assert config.data.seq_length == config.model.max_seq_length in (1024, 2048)
        assert low <= parameter_count(config.model) <= high
    assert not dense.model.mod.enabled and mod.model.mod.capacity == 0.125
    assert mod.model.routed_layer_ids == list(range(1, mod.model.num_layers, 2))
    # The pair differs in routing only (the router and predictor add < 1 % parameters).
    assert (dense.model.num_layers, dense.model.hidden_size, dense.model.num_heads) == (
        mod.model.num_layers, mod.model.hidden_size, mod.model.num_heads)
    assert parameter_count(mod.model) < 1.01 * parameter_count(dense.model)
