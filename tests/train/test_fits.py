"""A model whose weights, gradients and optimizer states alone exceed a rank's memory is
refused before DeepSpeed builds it, with the planner's estimate."""

from __future__ import annotations

import pytest
import torch

from modtrain.config import load_config
from modtrain.errors import ModtrainError
from modtrain.model.cost import Layout, model_state_bytes, rank_params
from modtrain.parallel.distributed import Topology
from modtrain.train.fits import GIB, check_fits, model_states, rank_memory


def _topo(tensor: int = 1, data: int = 1) -> Topology:
    return Topology(rank=0, world_size=tensor * data, local_rank=0, tensor_size=tensor,
                    pipeline_size=1, data_size=data, device=torch.device("cpu"))


def _config(*overrides: str):
    return load_config(None, ["model.vocab_size=32000", *overrides])


def test_the_estimate_is_the_planners_for_the_runs_layout():
    config = _config("train.zero_stage=2", "train.precision=bf16")
    layout = Layout(tensor=2, data=4, zero_stage=2, precision="bf16")
    assert model_states(config, _topo(tensor=2, data=4)) == model_state_bytes(
        rank_params(config.model, layout), layout)


def test_a_model_that_fits_passes_and_one_that_cannot_is_one_line():
    check_fits(_config(), _topo())
    big = _config("model.hidden_size=16384", "model.num_layers=64", "model.num_heads=128")
    need = model_states(big, _topo()).total
    assert need > rank_memory(torch.device("cpu"))
    with pytest.raises(ModtrainError) as err:
        check_fits(big, _topo())
    text = str(err.value)
    assert text.startswith(f"this model needs {need / GIB:.1f} GiB per rank")
    assert "1x1x1 TPxPPxDP) and a rank has" in text and "\n" not in text
