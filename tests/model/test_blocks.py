"""Blocks in the training step: no host syncs; bf16 residual streams with fp32 routing."""

from __future__ import annotations

import torch

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.model.blocks import RoutedBlock
from tests.model.host_sync import HostSyncs

S, B = 16, 2


def _model(*overrides: str) -> GPT:
    config = load_config(None, [
        "model.vocab_size=37", "model.num_layers=2", "model.hidden_size=16", "model.num_heads=2",
        f"model.max_seq_length={S}", f"data.seq_length={S}", "model.mod.enabled=true",
        "model.mod.predictor=true", *overrides])
    torch.manual_seed(0)
    return GPT(config.model)


def test_block_forwards_wait_for_no_host(dist):
    model = _model().train()
    rope = model._rope.window(0, S)
    x = torch.randn(S, B, 16, requires_grad=True)
    with HostSyncs() as syncs:
        for block in model.blocks:
            out, aux, stats = block(x, rope)
            (out.sum() + (aux if aux is not None else 0)).backward()
    assert any(isinstance(b, RoutedBlock) for b in model.blocks)
    assert syncs.found == []


def test_bf16_block_keeps_the_stream_dtype_and_fp32_routing(dist):
    model = _model().to(torch.bfloat16).train()
    block = next(b for b in model.blocks if isinstance(b, RoutedBlock))
    x = torch.randn(S, B, 16).to(torch.bfloat16)
    out, aux, stats = block(x, model._rope.window(0, S))
    assert out.dtype == torch.bfloat16 and aux.dtype == torch.float32
    assert stats["router_bce"].dtype == torch.float32
