"""Greedy, top-k and top-p choice of the next token."""

from __future__ import annotations

import math

import pytest
import torch

from modtrain.errors import ModtrainError
from modtrain.inference.sampling import Sampling, filter_logits, next_tokens


def _logits(*probs: float) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in probs]])


def test_top_k_keeps_the_k_largest():
    out = filter_logits(_logits(0.1, 0.4, 0.2, 0.3), top_k=2, top_p=1.0)
    assert torch.isfinite(out).tolist() == [[False, True, False, True]]


@pytest.mark.parametrize("top_p,kept", [(0.5, [True, False, False]), (0.6, [True, True, False]),
                                        (0.95, [True, True, True]), (1.0, [True, True, True])])
def test_top_p_keeps_the_smallest_prefix_reaching_p(top_p, kept):
    out = filter_logits(_logits(0.5, 0.3, 0.2), top_k=0, top_p=top_p)
    assert torch.isfinite(out).tolist() == [kept]


def test_greedy_and_sampling():
    logits = _logits(0.1, 0.6, 0.3).repeat(4, 1)
    assert next_tokens(logits, Sampling(temperature=0.0)).tolist() == [[1]] * 4
    g = torch.Generator().manual_seed(0)
    picks = next_tokens(logits.repeat(500, 1), Sampling(1.0, top_k=2), g)
    assert set(picks.flatten().tolist()) == {1, 2}


@pytest.mark.parametrize("kwargs,message", [({"temperature": -1.0}, "--temperature"),
                                            ({"top_k": -1}, "--top-k"),
                                            ({"top_p": 0.0}, "--top-p")])
def test_bad_settings_are_one_clear_error(kwargs, message):
    with pytest.raises(ModtrainError, match=message):
        Sampling(**kwargs)
