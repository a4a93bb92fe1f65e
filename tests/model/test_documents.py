"""Documents packed in a row: each attends only within itself, in dense and routed blocks."""

from __future__ import annotations

import pytest
import torch

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.model.blocks import RoutedBlock, block_delta
from modtrain.model.documents import DocumentMask, split_documents
from modtrain.model.router import tokens_per_row, topk_indices

EOS, V, H = 1, 41, 32
LENGTHS = (5, 7, 6)  # three documents in one row of 18 tokens, each ending in EOS
S = sum(LENGTHS)


def _documents(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    docs = [torch.randint(2, V, (n,), generator=g) for n in LENGTHS]
    for d in docs:
        d[-1] = EOS
    return docs


def _model(*overrides: str) -> GPT:
    config = load_config(None, [
        f"model.vocab_size={V}", "model.num_layers=4", f"model.hidden_size={H}",
        "model.num_heads=4", f"model.max_seq_length={S}", f"data.seq_length={S}",
        *overrides])
    torch.manual_seed(0)
    return GPT(config.model).eval()


def _split(tokens: torch.Tensor):
    return split_documents(tokens, EOS, mask=True, reset_positions=True)


def test_split_documents_cuts_after_each_eos():
    tokens = torch.tensor([[5, 1, 7, 8, 1, 9], [1, 1, 4, 4, 4, 4]])
    docs = split_documents(tokens, EOS, mask=True, reset_positions=True)
    assert docs.ids.tolist() == [[0, 0, 1, 1, 1, 2], [0, 1, 2, 2, 2, 2]]
    assert docs.positions.tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 0, 1, 2, 3]]
    plain = split_documents(tokens, EOS, mask=False, reset_positions=False)
    assert plain.ids is None and plain.positions is None


def test_document_mask_is_causal_and_within_documents():
    ids = torch.tensor([[0, 0, 1, 1, 2]]).t()  # [S, B]
    seen = ~DocumentMask.of(ids).masked[0, 0]
    want = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 1, 1, 0],
                         [0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(seen, want)


# Capacity 1.0: every token is routed, so a document's outputs cannot depend on another's
# through the selection either; the router still scales each token's delta.
@pytest.mark.parametrize("overrides", [(), ("model.mod.enabled=true", "model.mod.capacity=1.0")],
                         ids=["dense", "mod_capacity_1"])
def test_a_packed_document_equals_the_document_alone(dist, overrides):
    model = _model(*overrides)
    docs = _documents(0)
    row = torch.cat(docs)[None]
    start, n = LENGTHS[0], LENGTHS[1]
    with torch.no_grad():
        packed = model(row, documents=_split(row)).logits[0, start : start + n]
        alone = model(docs[1][None]).logits[0]
        unmasked = model(row).logits[0, start : start + n]
    torch.testing.assert_close(packed, alone, rtol=0, atol=1e-5)
    assert not torch.allclose(unmasked, alone, atol=1e-3)  # the row without masking differs


def test_causal_routing_decides_per_token_so_a_packed_document_equals_it_alone(dist):
    """Sampling's routing (sigmoid(r) > 0.5 per token, rows one by one) at capacity 0.25:
    each token's decision is its own, so document 2 computes what it computes alone."""
    model = _model("model.mod.enabled=true", "model.mod.capacity=0.25",
                   "model.mod.inference_routing=router")
    torch.manual_seed(2)
    for block in model.blocks:  # scores of both signs: some tokens routed, some skipped
        if isinstance(block, RoutedBlock):
            torch.nn.init.normal_(block.router.proj.weight, std=1.0)
    docs = _documents(0)
    rows = torch.stack([torch.cat(docs), torch.cat(_documents(1))])
    start, n = LENGTHS[0], LENGTHS[1]
    with torch.no_grad():
        out = model(rows, routing="causal", documents=_split(rows))
        alone = model(docs[1][None], routing="causal").logits[0]
    torch.testing.assert_close(out.logits[0, start : start + n], alone, rtol=0, atol=1e-5)
    routed = [v for k, v in out.stats.items() if k.startswith("routed_frac/")]
    assert routed and all(0 < v < 1 for v in routed)  # some tokens routed, some skipped


@pytest.mark.parametrize("overrides", [(), ("model.mod.enabled=true", "model.mod.capacity=1.0")],
                         ids=["dense", "mod_capacity_1"])
def test_changing_document_one_changes_no_later_output_in_any_layer(dist, overrides):
    model = _model(*overrides)
    first, other = _documents(0), _documents(1)
    rows = [torch.cat(first)[None], torch.cat([other[0], *first[1:]])[None]]
    outputs: list[list[torch.Tensor]] = [[], []]
    for seen, row in zip(outputs, rows):
        hooks = [b.register_forward_hook(lambda m, i, o, seen=seen: seen.append(o[0]))
                 for b in model.blocks]
        with torch.no_grad():
            seen.append(model(row, documents=_split(row)).logits.transpose(0, 1))
        for h in hooks:
            h.remove()
    later = slice(LENGTHS[0], S)
    for a, b in zip(*outputs):  # each block's output [S, B, H], then the logits
        torch.testing.assert_close(a[later], b[later], rtol=0, atol=0)
        assert not torch.equal(a[: LENGTHS[0]], b[: LENGTHS[0]])


def _by_hand(block: RoutedBlock, x: torch.Tensor, rope_table, ids: torch.Tensor,
             positions: torch.Tensor) -> torch.Tensor:
    """The routed block's output computed one (row, document) at a time: the selected tokens
    of a document alone, in order, plain causal attention at their original positions."""
    logits = block.router.logits(x)
    index = topk_indices(logits, tokens_per_row(block.config.capacity, x.shape[0]))
    out = x.clone()
    for b in range(x.shape[1]):
        for doc in ids[:, b].unique():
            sel = index[:, b][ids[index[:, b], b] == doc]
            if sel.numel() == 0:
                continue
            rope = rope_table.window(0, x.shape[0]).gather(positions[sel, b][:, None])
            delta = block_delta(block.layer, x[sel, b : b + 1], rope)
            out[sel, b] = x[sel, b] + logits[sel, b, None] * delta[:, 0]
    return out


def test_routed_block_attends_within_documents_at_original_positions(dist):
    # Weights large enough for attention to be far from uniform: positions matter.
    model = _model("model.mod.enabled=true", "model.mod.capacity=0.5", "model.init_std=0.3")
    block = next(b for b in model.blocks if isinstance(b, RoutedBlock))
    rows = torch.stack([torch.cat(_documents(s)) for s in (0, 1)])  # [B, S]
    docs = _split(rows)
    ids, positions = docs.ids.t(), docs.positions.t()  # [S, B]
    torch.manual_seed(1)
    x = torch.randn(S, 2, H)
    rope = model._rope.gather(positions)
    with torch.no_grad():
        got, _, _ = block(x, rope, documents=DocumentMask.of(ids))
        want = _by_hand(block, x, model._rope, ids, positions)
        whole_row, _, _ = block(x, rope)  # the selected tokens attending across documents
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # outputs of size ~10
    assert not torch.allclose(whole_row, want, atol=1e-3)
