"""The export's MoD routing maths: fp32 whatever the model dtype, ties to the lowest positions."""

from __future__ import annotations

import torch

from modtrain.inference.hf_template.modtrain_core import CoreConfig, Router, topk_indices


def _router(dtype: torch.dtype) -> Router:
    config = CoreConfig(vocab_size=8, hidden_size=2, intermediate_size=4, num_hidden_layers=2,
                        num_attention_heads=1, num_key_value_heads=1, head_dim=2,
                        rms_norm_eps=1e-5, rope_theta=1e4, max_position_embeddings=8,
                        mod_routed_layers=[1], mod_predictor_hidden=4)
    router = Router(config)
    with torch.no_grad():
        router.proj.weight.copy_(torch.ones(1, 2))
    return router.to(dtype)


def test_scores_and_predictor_are_fp32_and_a_near_tie_selects_as_in_fp32():
    # [B=1, T=2, H=2]: token 1 scores 1 + 2^-9 in fp32; both tokens round to 1.0 in bf16.
    x = torch.tensor([[[1.0, 0.0], [1.0, 2.0**-9]]], dtype=torch.bfloat16)
    router = _router(torch.bfloat16)
    r = router.scores(x)
    assert r.dtype == torch.float32 and router.predictor(x).dtype == torch.float32
    assert topk_indices(r, 1).tolist() == [[1]]
    assert topk_indices(_router(torch.float32).scores(x.float()), 1).tolist() == [[1]]
    in_bf16 = router.proj(x).squeeze(-1)  # the module's own dtype ties the two
    assert in_bf16[0, 0] == in_bf16[0, 1] and topk_indices(in_bf16, 1).tolist() == [[0]]


def test_ties_go_to_the_lowest_positions():
    r = torch.zeros(2, 48)
    r[1, 30:] = 1.0
    assert topk_indices(r, 6).tolist() == [list(range(6)), list(range(30, 36))]
    assert topk_indices(r, 20)[1].tolist() == [0, 1, *range(30, 48)]
