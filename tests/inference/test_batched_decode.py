"""Routed layers decode the tokens routed across the batch as one compact batch, against
ragged per-row caches, with the same results as decoding each row alone."""

from __future__ import annotations

import pytest
import torch

from modtrain.inference.generate import generate_ids
from modtrain.inference.hf_template.modtrain_core import CoreConfig, LayerKV, ModtrainLM

BATCH = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is fastest, and immune to other jobs on the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> ModtrainLM:
    """Random weights; routing by the router's sign routes about half the tokens, so rows
    soon hold different numbers of entries in routed layers."""
    config = CoreConfig(
        vocab_size=96, hidden_size=64, intermediate_size=160, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
        rope_theta=10000.0, max_position_embeddings=40, mod_routed_layers=[1, 3],
        mod_capacity=0.25, mod_inference_routing="router",
    )
    torch.manual_seed(0)
    return ModtrainLM(config).eval()


def _prompt(rows: int = BATCH, length: int = 7) -> torch.Tensor:
    return torch.randint(0, 96, (rows, length), generator=torch.Generator().manual_seed(3))


def test_batch_decodes_like_each_row_alone(model):
    prompt = _prompt()
    new = 70  # past the 40-token window: the context restarts (a ragged prefill) twice
    batch = generate_ids(model, prompt, new).ids
    for row in range(BATCH):
        assert torch.equal(batch[row : row + 1], generate_ids(model, prompt[row : row + 1],
                                                              new).ids), row
    assert torch.equal(batch, generate_ids(model, prompt, new, use_cache=False).ids)


def test_routed_layer_runs_once_per_step_on_the_routed_rows(model):
    """One attention and one MLP call per routed layer and step, on exactly the rows that
    routed the token; a layer where no row routes runs nothing."""
    routed = [layer for layer in model.model.layers if layer.router is not None]
    calls: list[tuple[int, int]] = []  # (layer, rows in the call)
    decided: list[tuple[int, int]] = []
    hooks = []
    for i, layer in enumerate(routed):
        decide = layer.router.causal_mask
        layer.router.causal_mask = (lambda x, r, decide=decide, i=i:
                                    decided.append((i, int(decide(x, r).sum()))) or decide(x, r))
        hooks.append(layer.self_attn.register_forward_pre_hook(
            lambda m, a, i=i: calls.append((i, a[0].shape[0]))))
        hooks.append(layer.mlp.register_forward_pre_hook(
            lambda m, a, i=i: calls.append((i, a[0].shape[0]))))
    ids = _prompt()
    try:
        with torch.no_grad():
            cache = model.new_cache(BATCH)
            model(ids[:, :3], "causal", cache)
            calls.clear()
            decided.clear()
            for t in range(3, ids.shape[1]):
                model(ids[:, t : t + 1], "causal", cache)
    finally:
        for h in hooks:
            h.remove()
        for layer in routed:
            del layer.router.causal_mask
    expected = [(i, n) for i, n in decided for _ in range(2) if n > 0]
    assert calls == expected
    assert any(0 < n < BATCH for _, n in decided)  # some steps route only part of the batch


@pytest.mark.parametrize("rows", [[0, 1, 2], [1, 2], [0, 2, 3], [3]])
def test_ragged_append_matches_rows_one_by_one(rows):
    """Appending one token to some rows of a ragged cache stores it at each row's end and
    returns, for those rows, what attention over each row alone would see."""
    torch.manual_seed(1)
    kv = LayerKV(4, 2, 8, torch.float32, "cpu")
    # Rows of 3, 1, 0 and 2 entries.
    for group in ([0, 1, 3], [0, 3], [0]):
        kv.append(torch.randn(len(group), 2, 1, 8), torch.randn(len(group), 2, 1, 8), group)
    before = [kv.k[r, :, :n].clone() for r, n in enumerate(kv.row_lengths)]
    k, v = torch.randn(len(rows), 2, 1, 8), torch.randn(len(rows), 2, 1, 8)
    keys, values, mask, causal = kv.append(k, v, rows)
    assert not causal
    q = torch.randn(len(rows), 2, 1, 8)
    out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
    for j, r in enumerate(rows):
        alone_k = torch.cat((before[r], k[j]), dim=1)
        assert torch.equal(kv.k[r, :, : kv.row_lengths[r]], alone_k)
        alone_v = torch.cat((kv.v[r, :, : kv.row_lengths[r] - 1], v[j]), dim=1)
        expect = torch.nn.functional.scaled_dot_product_attention(q[j : j + 1], alone_k[None],
                                                                  alone_v[None])
        torch.testing.assert_close(out[j : j + 1], expect)
    untouched = set(range(4)) - set(rows)
    assert all(kv.row_lengths[r] == before[r].shape[1] for r in untouched)


def test_cache_memory_is_what_the_buffers_hold(model):
    with torch.no_grad():
        cache = model.new_cache(BATCH, max_length=40)
        ids = _prompt()
        model(ids, "causal", cache)
        for t in range(12):
            model(ids[:, t % 7 : t % 7 + 1], "causal", cache)
    entry = 2 * model.config.num_key_value_heads * model.config.head_dim * 4  # k and v, fp32
    lengths = cache.lengths()
    assert cache.used_bytes() == int(lengths.sum()) * entry
    buffers = sum(t.untyped_storage().nbytes() for layer in cache.layers
                  for t in (layer.k, layer.v))
    assert cache.allocated_bytes() == buffers
    dense, routed = lengths[[0, 2]], lengths[[1, 3]]
    assert (dense == 19).all() and (routed < 19).all() and (routed > 0).any()
    assert cache.used_bytes() < cache.allocated_bytes()
