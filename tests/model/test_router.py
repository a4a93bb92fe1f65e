"""Router precision and tie order: fp32 scores under bf16 parameters, lowest positions first."""

from __future__ import annotations

import torch

from modtrain.config.schema import MoDConfig
from modtrain.model.router import MoDRouter, topk_indices

HIDDEN = 2


def _router(dtype: torch.dtype) -> MoDRouter:
    router = MoDRouter(HIDDEN, MoDConfig(enabled=True, predictor=True, predictor_hidden=4), 0.02)
    with torch.no_grad():
        router.proj.weight.copy_(torch.ones(1, HIDDEN))
    return router.to(dtype)


def _near_tie() -> torch.Tensor:
    """[S=2, B=1, H=2] bf16: token 1 scores 1 + 2^-9 in fp32, token 0 scores 1; both round to
    1.0 in bf16 (its ulp at 1 is 2^-7)."""
    return torch.tensor([[[1.0, 0.0]], [[1.0, 2.0**-9]]], dtype=torch.bfloat16)


def test_router_scores_are_fp32_under_bf16_weights_and_inputs():
    router = _router(torch.bfloat16)
    x = _near_tie()
    assert router.logits(x).dtype == torch.float32
    assert router.predictor_logits(x).dtype == torch.float32


def test_bf16_selection_equals_fp32_selection_on_a_near_tie():
    x = _near_tie()
    fp32 = topk_indices(_router(torch.float32).logits(x.float()), 1)
    bf16 = topk_indices(_router(torch.bfloat16).logits(x), 1)
    assert fp32.tolist() == [[1]] and torch.equal(bf16, fp32)
    # Scores computed in bf16 (the module's own dtype) tie and select the other token.
    in_bf16 = _router(torch.bfloat16).proj(x).squeeze(-1)
    assert in_bf16[0, 0] == in_bf16[1, 0]
    assert topk_indices(in_bf16, 1).tolist() == [[0]]


def test_ties_select_the_lowest_positions_first():
    scores = torch.zeros(64, 3)
    scores[40:] = -1.0
    scores[::7, 1] = 1.0  # row 1: 0, 7, ... win outright, then the tied zeros in order
    index = topk_indices(scores, 12)
    assert index[:, 0].tolist() == list(range(12))
    assert index[:, 1].tolist() == sorted({*range(0, 64, 7)} | {1, 2})
    assert torch.equal(index, topk_indices(scores.to(torch.bfloat16), 12))
