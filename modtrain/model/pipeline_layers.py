"""The GPT cut into layers that a pipeline can place on stages (the modules only; the
DeepSpeed PipelineModule that cuts and places them is `parallel/pipeline_stages.py`).

The same megatron-core parts as `GPT`, as layers that pass one tensor ([S, B, H]
hidden states) from stage to stage: embedding, one layer per block, final norm, and the
output projection (tied to the embedding through DeepSpeed's TiedLayerSpec). Routing aux
losses cannot travel with the activations, so each routed block injects its aux-loss
gradient into the backward pass where it was computed (AuxLossInjector).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from modtrain.config.schema import ModelConfig
from modtrain.model.blocks import build_block, set_recompute
from modtrain.model.embedding_and_head import (
    build_embedding,
    build_final_norm,
    build_output_layer,
)
from modtrain.model.layer_spec import transformer_config
from modtrain.model.loss import mask_padded_vocab
from modtrain.model.rope import Rope
from modtrain.model.tensor_split import TensorSlice


class AuxLossInjector(torch.autograd.Function):
    """Identity on `hidden`; in backward, gives `aux` the gradient `scale` (d total / d aux)."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, aux: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(aux)
        ctx.scale = scale
        return hidden

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (aux,) = ctx.saved_tensors
        return grad, torch.full_like(aux, ctx.scale), None


def unit_scale() -> float:
    return 1.0


class EmbeddingLayer(nn.Module):
    """First stage: tokens [B, S] -> hidden [S, B, H]; on the last stage, the tied head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        tc = transformer_config(config)
        self.config = config
        self.embedding = build_embedding(config, tc)
        self.head = build_output_layer(config, tc, tied=True)

    @property
    def weight(self) -> torch.Tensor:  # DeepSpeed ties stages through this attribute
        return self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens).transpose(0, 1).contiguous()

    def project(self, hidden: torch.Tensor) -> torch.Tensor:
        logits, _ = self.head(hidden, weight=self.embedding.weight)
        return mask_padded_vocab(logits, self.config.vocab_size,
                                 self.embedding.vocab_start_index)


def tied_head(module: EmbeddingLayer, hidden: torch.Tensor) -> torch.Tensor:
    return module.project(hidden)


def tied_head_input(module: EmbeddingLayer,
                    hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked loss's input (hidden, head weight): the loss projects a chunk at a time."""
    return hidden, module.embedding.weight


class BlockLayer(nn.Module):
    """One decoder block; accumulates its routing statistics between `pop_stats` calls."""

    def __init__(self, config: ModelConfig, index: int, recompute: str = "none") -> None:
        super().__init__()
        tc = transformer_config(config)
        self.block = build_block(config, tc, index)
        set_recompute(self.block, recompute)
        self.index = index
        head_dim = config.hidden_size // config.num_heads
        self._rope = Rope.table(config.max_seq_length, head_dim, config.rope_base,
                                config.rope_scaling)
        self._stats: dict[str, torch.Tensor] = {}
        self._calls = 0
        # d(what DeepSpeed differentiates) / d(aux loss), read at each forward: the engine
        # sets it to loss scale / gradient-accumulation steps (train/engine.py), as DeepSpeed
        # scales the LM loss the same way before its backward and unscales every gradient.
        self.aux_grad_scale: Callable[[], float] = unit_scale

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self._rope.cos.device != hidden.device:
            self._rope = self._rope.to(hidden.device)
        out, aux, stats = self.block(hidden, self._rope.window(0, hidden.shape[0]))
        if aux is not None and torch.is_grad_enabled():
            out = AuxLossInjector.apply(out, aux, self.aux_grad_scale())
        if self.training:
            self._calls += 1
            for name, value in stats.items():
                key = f"{name}/layer{self.index}"
                # Kept on the device: read once per step with the loss, not once per value.
                self._stats[key] = self._stats.get(key, 0.0) + value.detach().double()
        return out

    def pop_stats(self) -> dict[str, torch.Tensor]:
        """Mean of each statistic over the micro-batches since the last call."""
        out = {k: v / max(self._calls, 1) for k, v in self._stats.items()}
        self._stats, self._calls = {}, 0
        return out


class FinalNormLayer(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        tc = transformer_config(config)
        self.final_norm = build_final_norm(config, tc)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.final_norm(hidden)


class OutputLayer(nn.Module):
    """Untied output projection (last stage); `tensor` says which vocabulary shard it holds.
    With `chunked`, it returns (hidden, weight) for the chunked loss to project."""

    def __init__(self, config: ModelConfig, tensor: TensorSlice | None = None,
                 chunked: bool = False) -> None:
        super().__init__()
        self.chunked = chunked
        tc = transformer_config(config)
        self.config = config
        self.output_layer = build_output_layer(config, tc, tied=False)
        tensor = tensor or TensorSlice()
        self.vocab_start = config.padded_vocab_size // tensor.size * tensor.rank

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.chunked:
            return hidden, self.output_layer.weight
        logits, _ = self.output_layer(hidden)
        return mask_padded_vocab(logits, self.config.vocab_size, self.vocab_start)

