"""Dense and Mixture-of-Depths blocks around a megatron-core TransformerLayer.

Both compute the layer's *delta* f(x) = attn + mlp from megatron's own submodules
(pre-norm attention, pre-norm SwiGLU MLP), so that a routed block can scale the delta,
never the residual: x + r * f(x~) for selected tokens, x unchanged for the rest.

Under sequence parallelism x is this tensor rank's shard of the sequence: a routed block
gathers the router scores of the whole row, selects top-k over it exactly as one process
does, runs f on the k selected tokens (split over the ranks in sequence order), and hands
each rank back the updates of its own tokens.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from megatron.core.transformer.spec_utils import build_module
from megatron.core.transformer.transformer_layer import TransformerLayer
from torch import nn

from modtrain.config.schema import MoDConfig, ModelConfig
from modtrain.model.attention import self_attention
from modtrain.model.documents import DocumentMask
from modtrain.model.experts import ExpertMLP, ExpertSlice, SwiGLUExpert
from modtrain.model.layer_spec import decoder_layer_spec, expert_mlp_spec
from modtrain.model.mlp import is_plain_swiglu, swiglu
from modtrain.model.recompute import MODES, recomputed
from modtrain.model.rng import tensor_parallel_rng
from modtrain.model.rope import Rope
from modtrain.model.router import MoDRouter, membership, tokens_per_row, topk_indices
from modtrain.model.sequence_parallel import (
    gather_from_sequence,
    reduce_scatter_to_sequence,
    tensor_group,
)

BlockStats = dict[str, torch.Tensor]


def _attention_and_mlp(layer: TransformerLayer, x: torch.Tensor, rope: Rope,
                       mask: torch.Tensor | None = None, selective: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """attn, x + attn, mlp of a pre-norm block (dropout applied). x is [S, B, H]; `mask`:
    the attention mask (None: causal over the row). `selective`: rerun core attention and
    the dense MLP's activation in backward."""
    p = layer.config.hidden_dropout if layer.training else 0.0
    # On a sequence shard each rank holds other tokens: it draws its own dropout mask.
    own_mask = p > 0 and layer.config.sequence_parallel
    attn = self_attention(layer.self_attention, layer.input_layernorm(x), rope, mask,
                          selective)
    with tensor_parallel_rng(x.device) if own_mask else contextlib.nullcontext():
        attn = F.dropout(attn, p=p, training=layer.training)
    mid = x + attn
    hidden = layer.pre_mlp_layernorm(mid)
    mlp = (swiglu(layer.mlp, hidden, selective) if is_plain_swiglu(layer.mlp)
           else layer.mlp(hidden)[0])
    with tensor_parallel_rng(x.device) if own_mask else contextlib.nullcontext():
        mlp = F.dropout(mlp, p=p, training=layer.training)
    return attn, mid, mlp


def block_delta(layer: TransformerLayer, x: torch.Tensor, rope: Rope,
                mask: torch.Tensor | None = None, selective: bool = False) -> torch.Tensor:
    """f(x): the sum of the attention and MLP outputs of a pre-norm block. x is [S, B, H]."""
    attn, _, mlp = _attention_and_mlp(layer, x, rope, mask, selective)
    return attn + mlp


def set_recompute(block: DenseBlock | RoutedBlock, mode: str) -> None:
    """train.recompute for one block: none, selective (core attention and the MLP
    activation, experts' too, rerun in backward) or full (the whole block rerun)."""
    if mode not in MODES:
        raise ValueError(f"recompute mode {mode!r}; use one of {', '.join(MODES)}")
    block.recompute = mode
    for module in block.layer.mlp.modules():
        if isinstance(module, SwiGLUExpert):
            module.recompute_activation = mode == "selective"


def add_aux(total: torch.Tensor | None, aux: torch.Tensor | None) -> torch.Tensor | None:
    return aux if total is None else total if aux is None else total + aux


def expert_outputs(layer: TransformerLayer) -> tuple[torch.Tensor | None, BlockStats]:
    """The aux loss and statistics of the layer's last MLP call (experts only)."""
    if isinstance(layer.mlp, ExpertMLP):
        return layer.mlp.last_aux, dict(layer.mlp.last_stats)
    return None, {}


class DenseBlock(nn.Module):
    routed = False
    recompute = "none"  # none | selective | full (set_recompute; model/recompute.py)

    def __init__(self, layer: TransformerLayer) -> None:
        super().__init__()
        self.layer = layer

    def forward(
        self, x: torch.Tensor, rope: Rope, routing: str = "topk",
        documents: DocumentMask | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, BlockStats]:
        """`documents`: attention within each document (None: over the whole row)."""
        # (x + attn) + mlp: the residual stream as a plain pre-norm layer adds it, one add
        # fewer than x + f(x) (forward and backward); equal up to rounding.
        mask = None if documents is None else documents.masked
        _, mid, mlp = recomputed(self.recompute == "full", _attention_and_mlp, self.layer, x,
                                 rope, mask, self.recompute == "selective")
        return (mid + mlp, *expert_outputs(self.layer))


class RoutedBlock(nn.Module):
    """A MoD block: only the routed tokens enter attention (as queries and keys) and MLP."""

    routed = True
    # none | selective | full: recomputation reruns f on the k routed tokens; the routing
    # (router, top-k, gather) runs once, in forward.
    recompute = "none"

    def __init__(
        self, layer: TransformerLayer, config: MoDConfig, hidden_size: int, init_std: float
    ) -> None:
        super().__init__()
        self.layer = layer
        self.config = config
        self.sequence_parallel = layer.config.sequence_parallel
        self.router = MoDRouter(hidden_size, config, init_std, self.sequence_parallel)
        self.last_index: torch.Tensor | None = None  # [k, B]: the whole rows' selection

    def _route(
        self, x: torch.Tensor, logits: torch.Tensor, index: torch.Tensor, rope: Rope,
        documents: DocumentMask | None = None,
    ) -> torch.Tensor:
        """x + r * f(x~) at `index` ([k, B], sorted); other tokens copied bit for bit. The
        selected tokens keep their positions and documents: among them, a query sees the
        keys of its own document at earlier original positions."""
        hidden = x.shape[-1]
        gather_index = index.unsqueeze(-1).expand(-1, -1, hidden)
        x_sel = x.gather(0, gather_index)
        r_sel = logits.gather(0, index).unsqueeze(-1)  # fp32
        mask = None if documents is None else documents.select(index).masked
        delta = recomputed(self.recompute == "full", block_delta, self.layer, x_sel,
                           rope.gather(index), mask, self.recompute == "selective")
        # r stays fp32 for the product; only the scaled delta is cast to the stream's dtype.
        return x.scatter(0, gather_index, x_sel + (r_sel * delta).to(x.dtype))

    def _route_shards(
        self, x: torch.Tensor, scores: torch.Tensor, index: torch.Tensor, rope: Rope
    ) -> torch.Tensor:
        """`_route` on a sequence shard: x [S/tp, B, H] and its router scores [S/tp, B];
        index [k, B] is the whole rows' selection. Each rank contributes its own selected
        tokens and their scores (zeros elsewhere); one reduce-scatter hands rank r the
        selected tokens r*k/tp.. of the sorted order; f runs on them sequence-parallel and
        is scaled there; an all-gather of the scaled updates lets each rank add those of
        its own tokens."""
        group = tensor_group()
        local, hidden = x.shape[0], x.shape[-1]
        offset = index - local * torch.distributed.get_rank(group)
        mine = (offset >= 0) & (offset < local)  # [k, B]
        row = offset.clamp(0, local - 1)  # other ranks' tokens land on a row, as zeros
        slot = row.unsqueeze(-1).expand(-1, -1, hidden)
        zero = x.new_zeros(())
        x_sel = reduce_scatter_to_sequence(
            torch.where(mine.unsqueeze(-1), x.gather(0, slot), zero), group)
        r_sel = reduce_scatter_to_sequence(  # fp32, [k/tp, B, 1]
            torch.where(mine, scores.gather(0, row), 0.0), group).unsqueeze(-1)
        delta = recomputed(self.recompute == "full", block_delta, self.layer, x_sel,
                           rope.gather(index), None, self.recompute == "selective")
        # r stays fp32 for the product; only the scaled delta is cast to the stream's dtype.
        # Rank r's loss uses the updates of its own tokens only: their gradients are summed.
        update = gather_from_sequence((r_sel * delta).to(x.dtype), group, partial_grad=True)
        # x + update at the selected tokens of this shard; adding exact zeros elsewhere
        # leaves x bit for bit.
        return x.scatter_add(0, slot, torch.where(mine.unsqueeze(-1), update, zero))

    def _forward_shards(self, x: torch.Tensor, rope: Rope
                        ) -> tuple[torch.Tensor, torch.Tensor | None, BlockStats]:
        """Top-k routing of a sequence shard x [S/tp, B, H] over the whole rows."""
        group = tensor_group()

        # One fp32 score per token, gathered: every rank computes the same top-k and the
        # same (replicated) router losses, so each keeps its own chunk of their gradient.
        def gather_row(t: torch.Tensor) -> torch.Tensor:
            return gather_from_sequence(t, group, partial_grad=False)

        scores = self.router.logits(x)
        logits = gather_row(scores)
        seq_length = logits.shape[0]
        index = topk_indices(logits, tokens_per_row(self.config.capacity, seq_length))
        self.last_index = index.detach()
        aux_loss, stats = self.router.aux_losses(x, logits, membership(index, seq_length),
                                                 gather=gather_row)
        return self._route_shards(x, scores, index, rope), aux_loss, stats

    def forward(
        self, x: torch.Tensor, rope: Rope, routing: str = "topk",
        documents: DocumentMask | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, BlockStats]:
        """routing="topk" (training, non-causal) or "causal" (sampling: per-token decision).
        `documents`: attention within each document (None: over the whole row)."""
        if self.sequence_parallel:
            if routing != "topk" or documents is not None:
                raise ValueError("sequence-parallel blocks route by top-k over whole rows "
                                 "(training, no document mask) only")
            return self._forward_shards(x, rope)
        seq_length = x.shape[0]
        logits = self.router.logits(x)
        if routing == "topk":
            index = topk_indices(logits, tokens_per_row(self.config.capacity, seq_length))
            self.last_index = index.detach()  # for routing maps and layout-equality checks
            aux_loss, stats = self.router.aux_losses(x, logits, membership(index, seq_length))
            out = self._route(x, logits, index, rope, documents)
            expert_aux, expert_stats = expert_outputs(self.layer)
            return out, add_aux(aux_loss, expert_aux), {**stats, **expert_stats}
        if routing != "causal":
            raise ValueError(f"unknown routing mode {routing!r}")
        # Causal routing: each row routes its own number of tokens, so rows run one by one.
        mask = self.router.causal_mask(x, logits)
        rows = []
        for b in range(x.shape[1]):
            index = mask[:, b].nonzero()
            row = x[:, b : b + 1]
            row_docs = None if documents is None else DocumentMask.of(documents.ids[:, b : b + 1])
            rows.append(row if index.numel() == 0 else
                        self._route(row, logits[:, b : b + 1], index, rope.row(b), row_docs))
        stats = {"routed_frac": mask.float().mean()}
        return torch.cat(rows, dim=1), None, stats


def build_block(config: ModelConfig, tc, index: int, expert: ExpertSlice | None = None
                ) -> DenseBlock | RoutedBlock:
    """Block `index` (0-based) of the model: megatron-core layer, routed if configured, with
    experts in its MLP slot if it is an expert layer."""
    mlp = (expert_mlp_spec(config, expert or ExpertSlice())
           if index in config.moe_layer_ids else None)
    layer = build_module(decoder_layer_spec(mlp), config=tc, layer_number=index + 1)
    if index in config.routed_layer_ids:
        return RoutedBlock(layer, config.mod, config.hidden_size, config.init_std)
    return DenseBlock(layer)
