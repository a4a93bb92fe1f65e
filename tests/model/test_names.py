"""Pipeline-module parameter names <-> GPT parameter names, against the real modules."""

from __future__ import annotations

import pytest

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.model.names import gpt_name, pipeline_name
from modtrain.parallel.pipeline import build_pipeline


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
