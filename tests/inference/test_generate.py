"""KV-cached sampling equals recomputing the context, and routed layers cache only the
tokens they route."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from modtrain.data.tokenizer import Tokenizer
from modtrain.inference.export import load_export
from modtrain.inference.generate import generate_ids, generate_text
from modtrain.inference.sampling import Sampling
from modtrain.resources import TINYSHAKESPEARE
from tests.inference.conftest import SEQ


def _prompts(export: Path, rows: int, length: int) -> torch.Tensor:
    """`rows` real text snippets of `length` tokens each."""
    tokenizer = Tokenizer(export / "tokenizer.model")
    text = TINYSHAKESPEARE.read_text()[:20_000]
    ids = [tokenizer.encode(text[1000 * i : 1000 * i + 4 * length])[:length]
           for i in range(rows)]
    return torch.tensor(ids)


@pytest.fixture()
def routed_model(mod_export):
    """The tiny MoD export routing by router sign: it routes 25-45% of tokens per row (its
    4-step predictor routes none yet)."""
    return load_export(mod_export, inference_routing="router")


@pytest.mark.parametrize("export_name,routing", [("mod_export", "router"),
                                                 ("balanced_predictor_export", "predictor"),
                                                 ("dense_export", None)])
def test_cache_equals_no_cache_greedy(request, export_name, routing):
    export = request.getfixturevalue(export_name)
    export = export[0] if isinstance(export, tuple) else export
    model = load_export(export, inference_routing=routing)
    prompt = _prompts(export, 4, 10)
    new = 2 * SEQ  # crosses the trained window twice: the context restarts
    cached = generate_ids(model, prompt, new)
    plain = generate_ids(model, prompt, new, use_cache=False)
    assert cached.new_tokens == new
    assert torch.equal(cached.ids, plain.ids)


def test_cached_steps_match_full_forward(mod_export, routed_model):
    model = routed_model
    ids = _prompts(mod_export, 3, 24)
    with torch.no_grad():
        full = model(ids, "causal")
        cache = model.new_cache(3)
        steps = [model(ids[:, :8], "causal", cache)]
        steps += [model(ids[:, t : t + 1], "causal", cache) for t in range(8, 24)]
    diff = (torch.cat(steps, dim=1) - full).abs().max().item()
    assert diff < 1e-5, diff


def _routed_layers(model):
    return [(i, layer) for i, layer in enumerate(model.model.layers) if layer.router is not None]


def test_skipped_tokens_run_nothing_and_store_no_kv(mod_export, routed_model):
    model = routed_model
    routed = _routed_layers(model)
    assert [i for i, _ in routed] == [1, 3]
    ids = _prompts(mod_export, 4, 24)

    decisions: dict[int, list[torch.Tensor]] = {i: [] for i, _ in routed}
    computed: dict[str, int] = {"attn": 0, "mlp": 0}
    hooks = []
    for i, layer in routed:
        original = layer.router.causal_mask
        layer.router.causal_mask = (lambda x, r, f=original, i=i:
                                    decisions[i].append(f(x, r)) or decisions[i][-1])
        hooks.append(layer.self_attn.register_forward_pre_hook(
            lambda m, a: computed.__setitem__("attn", computed["attn"] + a[0].shape[0])))
        hooks.append(layer.mlp.register_forward_pre_hook(
            lambda m, a: computed.__setitem__("mlp", computed["mlp"] + a[0].shape[0])))
    with torch.no_grad():
        cache = model.new_cache(4)
        model(ids[:, :8], "causal", cache)
        computed.update(attn=0, mlp=0)  # count the token-by-token steps only
        for t in range(8, 24):
            model(ids[:, t : t + 1], "causal", cache)
    for h in hooks:
        h.remove()

    lengths = cache.lengths()
    for i, layer in enumerate(model.model.layers):
        if layer.router is None:
            assert lengths[i].tolist() == [24] * 4  # dense layers store every token
    decoded_routed = 0
    for i, masks in decisions.items():
        routed_per_row = torch.cat(masks, dim=1).sum(dim=1)  # prefill + every step
        assert lengths[i].tolist() == routed_per_row.tolist()
        decoded_routed += int(torch.cat(masks[1:], dim=1).sum())
    assert (lengths < 24).any() and (lengths > 0).all()  # some tokens were skipped
    # In decode steps one row-token enters attention / MLP per routed decision, no more.
    assert computed["attn"] == computed["mlp"] == decoded_routed
    assert decoded_routed < 2 * 4 * 16


def test_rows_route_independently(mod_export, routed_model):
    model = routed_model
    prompt = _prompts(mod_export, 4, 10)
    batch = generate_ids(model, prompt, 30).ids
    for b in range(4):
        alone = generate_ids(model, prompt[b : b + 1], 30).ids
        assert torch.equal(batch[b : b + 1], alone), b


def test_sampling_with_cache_is_seeded_like_without(mod_export, routed_model):
    model = routed_model
    prompt = _prompts(mod_export, 3, 10)
    sampling = Sampling(temperature=0.8, top_k=20, top_p=0.9)

    def run(use_cache: bool, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return generate_ids(model, prompt, 40, sampling, g, use_cache=use_cache).ids

    assert torch.equal(run(True, 1), run(False, 1))
    assert not torch.equal(run(True, 1), run(True, 2))


def test_stop_sequence_ends_samples_early(mod_export):
    texts, result = generate_text(mod_export, "ROMEO:", 200, num_samples=2,
                                  sampling=Sampling(temperature=1.0), seed=0, stop="e",
                                  routing="router")
    assert result.new_tokens < 200
    for text in texts:
        assert text.startswith("ROMEO:") and "e" not in text[len("ROMEO:"):]
