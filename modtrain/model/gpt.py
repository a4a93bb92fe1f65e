"""Decoder-only GPT with optional Mixture-of-Depths blocks, built from megatron-core parts.

`GPT` is the list of layers that pipeline stages cut (model/pipeline_layers.py), run whole:
one forward per layer, with the parameter names checkpoints and exports hold (embedding.,
blocks.N., final_norm., output_layer.). Tensors inside the model are sequence-first
([S, B, H]) as megatron-core expects. The model holds no parallelism logic of its own:
tensor parallelism lives in megatron-core's layers, data parallelism and ZeRO in DeepSpeed.
Under sequence parallelism the embedding output is split along the sequence over the tensor
ranks and stays split until the output layer gathers it (model/sequence_parallel.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from modtrain.config.schema import ModelConfig
from modtrain.model.blocks import add_aux
from modtrain.model.documents import DocumentMask, Documents
from modtrain.model.experts import ExpertSlice
from modtrain.model.init import initialize_parameters
from modtrain.model.layer_spec import transformer_config
from modtrain.model.pipeline_layers import (
    BlockLayer,
    EmbeddingLayer,
    FinalNormLayer,
    OutputLayer,
    head_loss,
)
from modtrain.model.rope import Rope
from modtrain.model.sequence_parallel import scatter_to_sequence, tensor_group
from modtrain.model.tensor_split import TensorSlice

_EXTRA_STATE = "_extra_state"


def _drop_empty_extra_state(module, state_dict, prefix, local_metadata) -> None:
    for key in [k for k in state_dict if k.endswith(_EXTRA_STATE) and state_dict[k] is None]:
        del state_dict[key]


def _fill_extra_state(module, state_dict, prefix, *args) -> None:
    for key in module._extra_state_keys:
        state_dict.setdefault(prefix + key, None)


@dataclass
class GPTOutput:
    loss: torch.Tensor | None  # language-model loss + routing aux losses (what is optimised)
    lm_loss: torch.Tensor | None
    logits: torch.Tensor | None  # [B, S, V] (vocab-parallel shard under TP); None with labels
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # per-layer routing metrics


class GPT(nn.Module):
    def __init__(self, config: ModelConfig, seed: int = 0, tensor: TensorSlice | None = None,
                 expert: ExpertSlice | None = None, loss_chunk_tokens: int = 0,
                 recompute_layers: Sequence[int] = (), recompute: str = "full",
                 sequence_parallel: bool = False,
                 build_context: Callable[[], contextlib.AbstractContextManager] =
                 contextlib.nullcontext) -> None:
        """`tensor`: this process's tensor-parallel slice (rank 0 of 1 by default); it must
        match the tensor-parallel group megatron-core's layers were built in. `expert`: its
        expert-parallel slice (model.moe; all experts by default). `loss_chunk_tokens`:
        compute the loss this many tokens at a time (train.loss_chunk_tokens; 0: whole).
        `recompute_layers`: blocks that recompute activations in backward, `recompute` how
        (train.recompute: selective or full). `sequence_parallel`: blocks run on a sequence
        shard of each tensor rank (parallel.sequence_parallel; top-k routing only).
        `build_context`: the context the layers are built in (ZeRO-3's `deepspeed.zero.Init`,
        which partitions each layer's parameters as soon as it is built); the initial weights
        and the RoPE table are made outside it, in fp32 whatever the context's dtype."""
        super().__init__()
        if config.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set before building the model")
        self.config = config
        self.tensor_size = (tensor or TensorSlice()).size
        # Under tensor parallelism the vocabulary-parallel loss stays (its logits are a shard).
        self.loss_chunk_tokens = loss_chunk_tokens if self.tensor_size == 1 else 0
        self.sequence_parallel = sequence_parallel
        tc = transformer_config(config, self.tensor_size, sequence_parallel)
        self.transformer_config = tc
        recomputed = set(recompute_layers)
        with build_context():
            first = EmbeddingLayer(config, tc)
            blocks = [BlockLayer(config, i, recompute if i in recomputed else "none", tc=tc,
                                 expert=expert) for i in range(config.num_layers)]
            norm = FinalNormLayer(config, tc)
            head = first if config.tie_embeddings else OutputLayer(config, tensor, tc=tc)
        # The pipeline's layers, run whole (a tuple: not submodules, so the parameters keep
        # the names below, which checkpoints, exports and the parameter table use).
        self.layers = (first, *blocks, norm, head)
        self.embedding = first.embedding
        self.blocks = nn.ModuleList(b.block for b in blocks)
        self.final_norm = norm.final_norm
        self.output_layer = first.head if config.tie_embeddings else head.output_layer
        # megatron-core's parallel linears add `_extra_state` entries that are always None
        # here (no fp8); they would leak None into checkpoints, which DeepSpeed's universal
        # checkpoint converter cannot read. Leave them out, and accept their absence.
        self._extra_state_keys = [k for k in self.state_dict() if k.endswith(_EXTRA_STATE)]
        self.register_state_dict_post_hook(_drop_empty_extra_state)
        self.register_load_state_dict_pre_hook(_fill_extra_state)
        initialize_parameters(self, config, seed, tensor, expert=expert)
        head_dim = config.hidden_size // config.num_heads
        # A plain attribute, not a buffer: casting the module to bf16 must not round the table.
        self._rope = Rope.table(config.max_seq_length, head_dim, config.rope_base,
                                config.rope_scaling)

    def forward(
        self,
        tokens: torch.Tensor,
        labels: torch.Tensor | None = None,
        routing: str = "topk",
        positions_offset: int = 0,
        documents: Documents | None = None,
    ) -> GPTOutput:
        """tokens, labels: [B, S]. routing: "topk" (training) or "causal" (sampling).
        `documents`: the rows' packed documents (model/documents.py): attention within each
        document where it has ids, RoPE at its positions where it has them."""
        seq_length = tokens.shape[1]
        if positions_offset + seq_length > self.config.max_seq_length:
            raise ValueError(
                f"sequence of {seq_length} tokens exceeds model.max_seq_length="
                f"{self.config.max_seq_length}"
            )
        if self._rope.cos.device != tokens.device:
            self._rope = self._rope.to(tokens.device)
        ids, positions = documents if documents is not None else (None, None)
        rope = (self._rope.window(positions_offset, seq_length) if positions is None
                else self._rope.gather(positions.t() + positions_offset))
        masks = None if ids is None else DocumentMask.of(ids.t())  # built once, for all blocks
        first, *blocks, norm, head = self.layers
        x = first(tokens)  # [S, B, H]
        if self.sequence_parallel:
            x = scatter_to_sequence(x, tensor_group())  # [S/tp, B, H]
        aux_total = None
        stats: dict[str, torch.Tensor] = {}
        for block in blocks:
            x, aux, block_stats = block.run(x, rope, routing, masks)
            aux_total = add_aux(aux_total, aux)
            stats.update(block_stats)
        x = norm(x)
        if labels is None:
            return GPTOutput(None, None, head.logits(x).transpose(0, 1), stats)
        outputs = head.loss_input(x) if self.loss_chunk_tokens else head.logits(x)
        lm = head_loss(outputs, labels, self.config.vocab_size, self.loss_chunk_tokens,
                       self.tensor_size)
        loss = lm if aux_total is None else lm + aux_total
        return GPTOutput(loss, lm, None, stats)
