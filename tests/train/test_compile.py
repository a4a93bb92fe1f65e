"""train.compile: refused with pipeline stages; blocks compiled in place, names unchanged."""

from __future__ import annotations

import pytest

from modtrain.config import load_config
from modtrain.errors import ModtrainError
from modtrain.train.compile import check_compile, compile_blocks

PIPELINE = ["parallel.pipeline=2", "train.zero_stage=0", "train.grad_clip=0"]


def test_compile_with_pipeline_stages_is_refused_in_one_line():
    with pytest.raises(ModtrainError, match="train.compile=true works with parallel.pipeline=1"):
        check_compile(load_config(None, [*PIPELINE, "train.compile=true"]))
    check_compile(load_config(None, PIPELINE))  # compile off: nothing to refuse
    check_compile(load_config(None, ["train.compile=true"]))


def test_blocks_compile_in_place_keeping_parameter_names(dist):
    from modtrain.model import GPT

    config = load_config(None, ["model.vocab_size=16", "model.num_layers=2",
                                "model.hidden_size=32", "model.num_heads=2"])
    model = GPT(config.model, seed=0)
    names = list(model.state_dict())
    assert compile_blocks(model) == 2
    assert list(model.state_dict()) == names  # checkpoints and ZeRO see the same model
    assert all(block._compiled_call_impl is not None for block in model.blocks)


@pytest.mark.parametrize("overrides, match", [
    (["parallel.tensor=2", "model.vocab_multiple=2"], "parallel.tensor>1"),
    (["train.zero_stage=3"], "train.zero_stage=3"),
])
def test_compile_is_refused_where_it_is_untested(overrides, match):
    from modtrain.config import load_config
    from modtrain.errors import ModtrainError
    from modtrain.train.compile import check_compile

    with pytest.raises(ModtrainError, match=match) as err:
        check_compile(load_config(None, ["train.compile=true", *overrides]))
    assert "\n" not in str(err.value)
