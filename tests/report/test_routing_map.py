"""`modtrain routing`: the decisions drawn are the model's own, from a run or an export."""

from __future__ import annotations

import math

import pytest
import torch

from modtrain.errors import ModtrainError
from modtrain.report.routing_map import draw_routing, load_routed_model, route


@pytest.mark.slow
def test_topk_marks_are_the_layers_own_choice(report_export):
    loaded = load_routed_model(report_export)
    ids = torch.tensor([loaded.tokenizer.encode("ROMEO: But soft, what light")])
    routing = route(loaded.model, ids)
    for layer, weights, chosen in zip(routing.layers, routing.weights, routing.topk):
        capacity = loaded.model.model.layers[layer].capacity
        k = math.ceil(capacity * ids.shape[1] - 1e-9)
        assert chosen.sum() == k
        # every chosen token scores at least as high as every skipped one
        assert weights[chosen].min() >= weights[~chosen].max()


@pytest.mark.slow
def test_run_and_export_give_the_same_picture_data(report_run, report_export):
    ids = torch.arange(2, 30)[None]
    from_run = route(load_routed_model(report_run).model, ids)
    from_export = route(load_routed_model(report_export).model, ids)
    for a, b in zip(from_run.weights, from_export.weights):
        assert torch.allclose(torch.from_numpy(a), torch.from_numpy(b), atol=1e-5)


@pytest.mark.slow
def test_draws_a_png_with_the_position_panel(report_run, tmp_path):
    out = draw_routing(report_run, "ROMEO: hello", tmp_path / "r.png", windows=4)
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_too_long_text_is_one_line(report_export, tmp_path):
    with pytest.raises(ModtrainError, match="more than the model's") as err:
        draw_routing(report_export, "x" * 500, tmp_path / "r.png")
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_draws_in_bf16_on_a_chosen_device(report_export, tmp_path):
    out = draw_routing(report_export, "ROMEO: hello", tmp_path / "r.png", device="cpu",
                       dtype="bf16")
    assert out.read_bytes()[:4] == b"\x89PNG"
