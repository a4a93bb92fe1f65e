"""The GPT's layers, one forward each: embedding, one layer per block, final norm, and the
output projection. `GPT` (model/gpt.py) runs the whole list; a DeepSpeed PipelineModule
(`parallel/pipeline_stages.py`) cuts the same list into stages.

Between pipeline stages a layer passes one tensor ([S, B, H] hidden states), so each
layer's `forward` takes and returns one; `GPT` calls the same per-layer code through the
methods beside it (`BlockLayer.run`, `logits`, `loss_input`) with what only the flat
model has (document masks, causal routing, a RoPE window at an offset). Routing aux losses
cannot travel with the activations between stages, so there each routed block injects its
aux-loss gradient into the backward pass where it was computed (AuxLossInjector).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from megatron.core.transformer import TransformerConfig
from torch import nn

from modtrain.config.schema import ModelConfig
from modtrain.model.blocks import BlockStats, build_block, set_recompute
from modtrain.model.documents import DocumentMask
from modtrain.model.embedding_and_head import (
    build_embedding,
    build_final_norm,
    build_output_layer,
)
from modtrain.model.experts import ExpertSlice
from modtrain.model.layer_spec import transformer_config
from modtrain.model.loss import chunked_lm_loss, lm_loss, mask_padded_vocab
from modtrain.model.rope import Rope
from modtrain.model.tensor_split import TensorSlice


@dataclass
class AuxGradScale:
    """d(what the pipeline engine differentiates) / d(an aux loss), one object shared by a
    stage's blocks. Its owner (train/steps.py) sets it before each step to loss scale /
    gradient-accumulation steps, as DeepSpeed scales the LM loss before its backward and
    unscales every gradient."""

    value: float = 1.0


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


class EmbeddingLayer(nn.Module):
    """First layer: tokens [B, S] -> hidden [S, B, H]; tied, also the output projection."""

    def __init__(self, config: ModelConfig, tc: TransformerConfig | None = None) -> None:
        super().__init__()
        tc = tc or transformer_config(config)
        self.config = config
        self.embedding = build_embedding(config, tc)
        self.head = build_output_layer(config, tc, tied=True)

    @property
    def weight(self) -> torch.Tensor:  # DeepSpeed ties stages through this attribute
        return self.embedding.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embedding(tokens.t())  # look up transposed ids: [S, B, H], no copy of x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[S, B, V/tp] logits, padded vocabulary ids -inf."""
        logits, _ = self.head(hidden, weight=self.embedding.weight)
        return mask_padded_vocab(logits, self.config.vocab_size,
                                 self.embedding.vocab_start_index)

    def loss_input(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunked loss's input (hidden, head weight): the loss projects a chunk at a time."""
        return hidden, self.embedding.weight


def tied_head(module: EmbeddingLayer, hidden: torch.Tensor) -> torch.Tensor:
    return module.logits(hidden)


def tied_head_input(module: EmbeddingLayer,
                    hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return module.loss_input(hidden)


class BlockLayer(nn.Module):
    """One decoder block; as a pipeline layer it accumulates its routing statistics between
    `pop_stats` calls."""

    def __init__(self, config: ModelConfig, index: int, recompute: str = "none",
                 aux_scale: AuxGradScale | None = None, tc: TransformerConfig | None = None,
                 expert: ExpertSlice | None = None) -> None:
        super().__init__()
        self.block = build_block(config, tc or transformer_config(config), index, expert)
        set_recompute(self.block, recompute)
        self.config = config
        self.index = index
        self.aux_scale = aux_scale or AuxGradScale()
        self._rope: Rope | None = None  # built at the first pipeline forward (GPT holds its own)
        self._stats: dict[str, torch.Tensor] = {}
        self._calls = 0

    def run(self, hidden: torch.Tensor, rope: Rope, routing: str = "topk",
            documents: DocumentMask | None = None
            ) -> tuple[torch.Tensor, torch.Tensor | None, BlockStats]:
        """The block on `hidden` at `rope`'s positions: (output, aux loss, statistics named
        NAME/layerN)."""
        out, aux, stats = self.block(hidden, rope, routing, documents)
        return out, aux, {f"{name}/layer{self.index}": v for name, v in stats.items()}

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        out, aux, stats = self.run(hidden, self._table(hidden.device).window(0, hidden.shape[0]))
        if aux is not None and torch.is_grad_enabled():
            out = AuxLossInjector.apply(out, aux, self.aux_scale.value)
        if self.training:
            self._calls += 1
            for key, value in stats.items():
                # Kept on the device: read once per step with the loss, not once per value.
                self._stats[key] = self._stats.get(key, 0.0) + value.detach().double()
        return out

    def _table(self, device: torch.device) -> Rope:
        if self._rope is None:
            m = self.config
            self._rope = Rope.table(m.max_seq_length, m.hidden_size // m.num_heads,
                                    m.rope_base, m.rope_scaling)
        if self._rope.cos.device != device:
            self._rope = self._rope.to(device)
        return self._rope

    def pop_stats(self) -> dict[str, torch.Tensor]:
        """Mean of each statistic over the micro-batches since the last call."""
        out = {k: v / max(self._calls, 1) for k, v in self._stats.items()}
        self._stats, self._calls = {}, 0
        return out


class FinalNormLayer(nn.Module):
    def __init__(self, config: ModelConfig, tc: TransformerConfig | None = None) -> None:
        super().__init__()
        self.final_norm = build_final_norm(config, tc or transformer_config(config))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.final_norm(hidden)


class OutputLayer(nn.Module):
    """Untied output projection (last layer); `tensor` says which vocabulary shard it holds.
    With `chunked`, its forward returns (hidden, weight) for the chunked loss to project."""

    def __init__(self, config: ModelConfig, tensor: TensorSlice | None = None,
                 chunked: bool = False, tc: TransformerConfig | None = None) -> None:
        super().__init__()
        self.chunked = chunked
        self.config = config
        self.output_layer = build_output_layer(config, tc or transformer_config(config),
                                               tied=False)
        tensor = tensor or TensorSlice()
        self.vocab_start = config.padded_vocab_size // tensor.size * tensor.rank

    def forward(self, hidden: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        return self.loss_input(hidden) if self.chunked else self.logits(hidden)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[S, B, V/tp] logits, padded vocabulary ids -inf."""
        logits, _ = self.output_layer(hidden)
        return mask_padded_vocab(logits, self.config.vocab_size, self.vocab_start)

    def loss_input(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return hidden, self.output_layer.weight


def head_loss(outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor], labels: torch.Tensor,
              vocab_size: int, chunk_tokens: int, tensor_size: int) -> torch.Tensor:
    """The LM loss of what the head returns: logits (this rank's vocabulary shard under
    tensor parallelism), or (hidden, weight) for the loss to project `chunk_tokens` at a time."""
    if isinstance(outputs, tuple):
        hidden, weight = outputs
        return chunked_lm_loss(hidden, weight, labels, vocab_size, chunk_tokens)
    return lm_loss(outputs, labels, tensor_size)
