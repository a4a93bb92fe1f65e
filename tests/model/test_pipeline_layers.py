"""Pipeline layers: GPT runs the same layers whole; the routing aux-loss gradient a block
injects into the backward, scaled as DeepSpeed scales the LM loss (accumulation steps, and
fp16's dynamic loss scale)."""

from __future__ import annotations

import types

import pytest
import torch

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.model.pipeline_layers import (
    AuxGradScale,
    BlockLayer,
    head_loss,
    tied_head,
    tied_head_input,
)
from modtrain.train.steps import aux_grad_scale

MODEL = ["model.num_layers=2", "model.num_heads=2", "model.hidden_size=16",
         "model.vocab_size=32", "data.seq_length=16", "model.max_seq_length=16",
         "model.mod.enabled=true", "model.mod.capacity=0.25", "model.mod.routed_layers=[1]"]


def _grads(block: BlockLayer, hidden: torch.Tensor, loss_factor: float, unscale: float):
    """d(loss_factor * sum(output)) / d(parameters), divided by `unscale` (what DeepSpeed does
    before the update under fp16)."""
    block.zero_grad()
    (loss_factor * block(hidden.clone()).sum()).backward()
    return {n: p.grad.clone() / unscale for n, p in block.named_parameters()
            if p.grad is not None}


def test_fp16_loss_scale_reaches_the_aux_gradient(dist):
    """Under a loss scale S (fp16) and G accumulation steps, DeepSpeed differentiates
    S * lm / G and divides every gradient by S. The injected router/predictor gradient must
    carry S / G too, or it comes out S times too small (2^-16 at the initial scale)."""
    config = load_config(None, MODEL)
    torch.manual_seed(0)
    aux_scale = AuxGradScale()  # what the step runner keeps current
    # Parameters as allocated: the stage builder inits.
    block = BlockLayer(config.model, 1, aux_scale=aux_scale)
    with torch.no_grad():
        for name, p in block.named_parameters():
            p.copy_(torch.ones_like(p) if "norm" in name else 0.2 * torch.randn_like(p))
    block.train()
    hidden = torch.randn(16, 2, 16)
    steps, scale = 4, 2.0**16
    aux_scale.value = 1.0 / steps
    reference = _grads(block, hidden, 1.0 / steps, 1.0)  # fp32: no loss scale
    aux_scale.value = scale / steps
    scaled = _grads(block, hidden, scale / steps, scale)
    router = [n for n in reference if "router" in n]
    assert router, "the routed block has router parameters"
    for name, grad in reference.items():
        torch.testing.assert_close(scaled[name], grad, rtol=1e-6, atol=1e-9)
    # Without the loss scale in the injection (before the fix) the router's gradient differs.
    aux_scale.value = 1.0 / steps
    unscaled = _grads(block, hidden, scale / steps, scale)
    assert any(not torch.allclose(unscaled[n], reference[n]) for n in router)


def test_the_engine_scale_follows_deepspeeds_loss_scale():
    """DeepSpeed's fp16 optimizers expose the current dynamic scale as `loss_scale`; fp16 does
    not run on CPU (DeepSpeed's CPU accelerator has no fp16), so the engine is a stand-in with
    the attributes DeepSpeed's engine has."""
    def engine(fp16: bool, loss_scale: float | None):
        optimizer = types.SimpleNamespace(loss_scale=loss_scale)
        return types.SimpleNamespace(fp16_enabled=lambda: fp16, optimizer=optimizer,
                                     gradient_accumulation_steps=lambda: 4)

    assert aux_grad_scale(engine(True, 65536.0)) == pytest.approx(16384.0)
    assert aux_grad_scale(engine(False, None)) == pytest.approx(0.25)
    assert aux_grad_scale(engine(False, 65536.0)) == pytest.approx(0.25)  # bf16: no scale


@pytest.mark.parametrize("tied,chunk", [(True, 0), (False, 0), (True, 8), (False, 8)])
def test_gpt_runs_the_pipeline_layers(dist, tied, chunk):
    """GPT is its pipeline layers run whole: their parameters are GPT's (under GPT's names),
    and the layers' pipeline forwards, chained as the stages chain them, give GPT's logits
    and loss exactly (the per-layer code exists once)."""
    config = load_config(None, [*MODEL, f"model.tie_embeddings={str(tied).lower()}"])
    model = GPT(config.model, seed=3, loss_chunk_tokens=chunk).eval()
    first, *blocks, norm, head = model.layers
    assert all(isinstance(b, BlockLayer) for b in blocks)
    layer_params = {id(p) for layer in model.layers for p in layer.parameters()}
    assert layer_params == {id(p) for p in model.parameters()}
    head.chunked = bool(chunk)  # as pipeline_layer_specs builds the last stage
    tokens = torch.randint(0, config.model.vocab_size, (2, 16),
                           generator=torch.Generator().manual_seed(0))
    labels = tokens.roll(-1, dims=1)
    with torch.no_grad():
        x = first(tokens)
        for block in blocks:
            x = block(x)
        x = norm(x)
        outputs = (tied_head_input(head, x) if chunk else tied_head(head, x)) if tied else head(x)
        want = model(tokens, labels)
        if not chunk:
            assert torch.equal(outputs.transpose(0, 1), model(tokens).logits)
    loss = head_loss(outputs, labels, config.model.vocab_size, chunk, tensor_size=1)
    assert torch.equal(loss, want.lm_loss)
