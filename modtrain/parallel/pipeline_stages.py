"""The DeepSpeed PipelineModule over the GPT's pipeline layers, cut into stages balanced by
analytic FLOPs (the layers themselves are `model/pipeline_layers.py`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from modtrain.config import Config
from modtrain.model.flops import head_flops, layer_flops
from modtrain.model.init import initialize_parameters
from modtrain.model.param_table import gpt_name
from modtrain.model.pipeline_layers import (
    AuxGradScale,
    BlockLayer,
    EmbeddingLayer,
    FinalNormLayer,
    OutputLayer,
    head_loss,
    tied_head,
    tied_head_input,
)
from modtrain.model.tensor_split import TensorSlice
from modtrain.parallel.distributed import Topology


@dataclass(frozen=True)
class StageCost:
    stage: int
    layers: list[str]
    flops: float
    share: float


def layer_costs(config: Config) -> tuple[list[str], list[float]]:
    """Names and forward FLOPs per sequence of the pipeline's layers, in order."""
    m, tokens = config.model, config.data.seq_length
    routed = set(m.routed_layer_ids)
    names = ["embedding"] + [
        f"block{i}{'(routed)' if i in routed else ''}" for i in range(m.num_layers)
    ] + ["final_norm", "output"]
    small = float(tokens * m.hidden_size)  # lookups and norms: negligible next to matmuls
    costs = [small, *layer_flops(m, tokens), small, head_flops(m, tokens)]
    return names, costs


def partition(costs: list[float], stages: int) -> list[int]:
    """Stage boundaries (len stages + 1) that minimise the most expensive stage."""
    from deepspeed.runtime.utils import partition_balanced

    return partition_balanced(weights=costs, num_parts=stages)


def stage_costs(config: Config, parts: list[int]) -> list[StageCost]:
    names, costs = layer_costs(config)
    total = sum(costs)
    return [
        StageCost(s, names[parts[s]:parts[s + 1]], sum(costs[parts[s]:parts[s + 1]]),
                  sum(costs[parts[s]:parts[s + 1]]) / total)
        for s in range(len(parts) - 1)
    ]


def format_stage_costs(table: list[StageCost]) -> str:
    lines = ["stage | layers | forward GFLOP/sequence | share"]
    for row in table:
        lines.append(f"{row.stage} | {', '.join(row.layers)} | {row.flops / 1e9:.4f} | "
                     f"{row.share:.1%}")
    return "\n".join(lines)


def chunks_loss(config: Config, tensor: TensorSlice) -> bool:
    """Whether the last stage hands (hidden, weight) to the chunked loss instead of logits;
    under tensor parallelism the vocabulary-parallel loss over logits stays."""
    return config.train.loss_chunk_tokens > 0 and tensor.size == 1


def stage_loss_fn(config: Config, tensor: TensorSlice) -> Callable:
    """The last stage's loss: `GPT`'s (`head_loss`), over what the last layer returns."""
    chunk = config.train.loss_chunk_tokens if chunks_loss(config, tensor) else 0
    return functools.partial(head_loss, vocab_size=config.model.vocab_size,
                             chunk_tokens=chunk, tensor_size=tensor.size)


def pipeline_layer_specs(config: Config, tensor: TensorSlice,
                         aux_scale: AuxGradScale | None = None) -> list:
    """DeepSpeed LayerSpecs: embedding, blocks 0..L-1, final norm, output projection; the
    blocks share `aux_scale` (d what the engine differentiates / d an aux loss)."""
    from deepspeed.pipe import LayerSpec, TiedLayerSpec

    m = config.model
    chunked = chunks_loss(config, tensor)
    if m.tie_embeddings:
        first = TiedLayerSpec("embed", EmbeddingLayer, m, tied_weight_attr="weight")
        last = TiedLayerSpec("embed", EmbeddingLayer, m,
                             forward_fn=tied_head_input if chunked else tied_head,
                             tied_weight_attr="weight")
    else:
        first = LayerSpec(EmbeddingLayer, m)
        last = LayerSpec(OutputLayer, m, tensor, chunked)
    recompute = set(config.train.recompute_layer_ids(m.num_layers))
    aux_scale = aux_scale or AuxGradScale()
    blocks = [LayerSpec(BlockLayer, m, i, config.train.recompute if i in recompute else "none",
                        aux_scale) for i in range(m.num_layers)]
    return [first, *blocks, LayerSpec(FinalNormLayer, m), last]


def build_pipeline(config: Config, topo: Topology, aux_scale: AuxGradScale | None = None):
    """The DeepSpeed PipelineModule of `config.model` and its stage-cost table; its blocks
    read their aux-loss gradient scale from `aux_scale`, which the caller keeps current."""
    from deepspeed.pipe import PipelineModule
    from deepspeed.runtime.pipe.topology import PipeModelDataParallelTopology

    _, costs = layer_costs(config)
    tensor = TensorSlice(topo.tensor_rank, topo.tensor_size)

    class CostBalancedPipeline(PipelineModule):
        # DeepSpeed balances by parameter count or layer count; MoD layers cost less than
        # their parameters suggest, so stages are cut by analytic FLOPs instead.
        def _partition_layers(self, method: str = "cost") -> None:
            self.parts = partition(costs, self.num_stages)
            stage = self._topo.get_coord(self.global_rank).pipe
            self._set_bounds(start=self.parts[stage], stop=self.parts[stage + 1])

        # PipelineModule builds its stage's layers in host memory and then moves itself to
        # the accelerator; built on the device, a rank holds no host copy of its stage.
        def _build(self) -> None:
            with torch.device(topo.device):
                super()._build()

    # Same rank order as megatron-core's parallel_state: tensor fastest, then data, then pipe.
    topology = PipeModelDataParallelTopology(
        num_pp=topo.pipeline_size, num_mp=topo.tensor_size, num_dp=topo.data_size
    )
    pipe = CostBalancedPipeline(
        layers=pipeline_layer_specs(config, tensor, aux_scale), topology=topology,
        loss_fn=stage_loss_fn(config, tensor),
        partition_method="cost",
    )
    initialize_parameters(
        pipe, config.model, config.run.seed, tensor,
        rename=lambda name: gpt_name(name, config.model.num_layers),
    )
    return pipe, stage_costs(config, pipe.parts)
