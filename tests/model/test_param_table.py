"""Pipeline-module parameter names <-> GPT parameter names, against the real modules."""

from __future__ import annotations

import pytest

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.model.param_table import gpt_name, pipeline_name
from modtrain.parallel.pipeline_stages import build_pipeline


@pytest.mark.parametrize("tied", [True, False])
def test_pipeline_and_gpt_names_map_one_to_one(dist, tied):
    config = load_config(None, [
        "model.vocab_size=67", "model.num_layers=3", "model.hidden_size=32",
        "model.num_heads=4", "model.max_seq_length=32", "data.seq_length=32",
        "model.mod.enabled=true", f"model.tie_embeddings={str(tied).lower()}",
    ])
    pipe, _ = build_pipeline(config, dist)  # one stage: every layer, DeepSpeed's own names
    pipe_names = [n for n, _ in pipe.named_parameters()]
    gpt_names = {n for n, _ in GPT(config.model).named_parameters()}
    layers = config.model.num_layers
    assert {gpt_name(n, layers) for n in pipe_names} == gpt_names
    assert len(pipe_names) == len(gpt_names)
    for name in pipe_names:
        assert pipeline_name(gpt_name(name, layers), layers, tied) == name


def test_pipeline_name_rejects_unknown_names():
    with pytest.raises(ValueError, match="not a GPT parameter"):
        pipeline_name("decoder.layers.0.weight", 2, True)


@pytest.mark.parametrize("overrides", [
    ["model.tie_embeddings=true", "model.mod.predictor=true"],
    ["model.tie_embeddings=false", "model.mod.predictor=false",
     "model.mod.inference_routing=router"],
    ["model.mod.enabled=false"],
])
def test_table_names_every_parameter_of_the_real_model(dist, overrides):
    """The table and `GPT` agree exactly: a parameter without a row (or a row for a
    parameter that does not exist) would break init, TP splits and the export."""
    from modtrain.model.param_table import (
        gpt_parameter_names,
        hf_names,
        param_kind,
        parameter_count,
    )

    config = load_config(None, [
        "model.vocab_size=67", "model.num_layers=3", "model.hidden_size=32",
        "model.num_heads=4", "model.max_seq_length=32", "data.seq_length=32",
        "model.mod.enabled=true", *overrides,
    ])
    real = dict(GPT(config.model).named_parameters())
    assert sorted(gpt_parameter_names(config.model)) == sorted(real)
    assert all(param_kind(n) is not None and hf_names(n) for n in real)
    assert {n: tuple(p.shape) for n, p in real.items()} == {
        n: param_kind(n).shape(config.model) for n in real}
    assert parameter_count(config.model) == sum(p.numel() for p in real.values())
