"""The DeepSpeed engine for a layout: the model (GPT, or pipeline stages), its optimizer and
schedule, and the step runner that fits the layout."""

from __future__ import annotations

import contextlib
import copy
import functools
from collections.abc import Callable
from typing import Any

import torch

from modtrain.config import Config
from modtrain.data.tokenizer import Tokenizer
from modtrain.errors import ModtrainError
from modtrain.model import GPT
from modtrain.model.documents import split_documents
from modtrain.model.experts import ExpertSlice, expert_stat_names
from modtrain.model.rng import seed_streams
from modtrain.model.router import stat_names
from modtrain.model.tensor_split import TensorSlice
from modtrain.parallel import MegatronMPU, Topology
from modtrain.train.grad_clip import GradientClipper, modtrain_clips
from modtrain.train.optim import GuardedAdamW, build_optimizer, build_scheduler
from modtrain.train.spikes import build_detector
from modtrain.train.steps import DocumentSplit, EngineStep, PipelineStep, StepRunner


def routing_stat_keys(config: Config) -> list[str]:
    """Every routing statistic the whole model logs: NAME/layerN per routed layer."""
    m = config.model
    routed = [f"{name}/layer{i}" for i in m.routed_layer_ids for name in stat_names(m.mod)]
    return routed + [f"{name}/layer{i}" for i in m.moe_layer_ids
                     for name in expert_stat_names(m.moe)]


def expert_slice(config: Config, topo: Topology) -> ExpertSlice:
    """This rank's expert-parallel coordinates. DeepSpeed groups consecutive data-parallel
    ranks into expert-parallel groups (with tensor and pipeline size 1, which model.moe
    requires), so the expert-parallel rank is the data-parallel rank modulo its size."""
    size = config.parallel.expert
    if topo.data_size % size:
        raise ModtrainError(
            f"parallel.expert={size} does not divide the data-parallel size {topo.data_size}; "
            f"launch a multiple of {size} processes or lower parallel.expert")
    return ExpertSlice(topo.data_rank % size, size,
                       topo.process_groups.data if topo.data_size > 1 else None)


def check_precision(precision: str, accelerator: Any) -> None:
    """A precision DeepSpeed's accelerator cannot run is one line here, not a traceback from
    inside deepspeed.initialize (its CPU accelerator has fp16 only where oneDNN has fp16
    kernels: CPUs with AVX512-FP16 or AMX-FP16)."""
    supported = {"fp16": accelerator.is_fp16_supported, "bf16": accelerator.is_bf16_supported}
    if precision in supported and not supported[precision]():
        raise ModtrainError(
            f"train.precision={precision} is not supported by DeepSpeed's "
            f"{accelerator.device_name()} accelerator on this machine; use "
            + ("bf16 or fp32 (docs/precision.md)" if precision == "fp16" else "fp32"))


def layer_build_context(config: Config, topo: Topology, ds_config: dict
                        ) -> Callable[[], contextlib.AbstractContextManager]:
    """The context GPT's layers are built in: this rank's device (`topo.device`), so no rank
    builds a host copy of its model for DeepSpeed to move. Under ZeRO-3, `deepspeed.zero.Init`:
    it allocates on the same device (its tensor overrides) and partitions each layer's
    parameters over the data-parallel group, in the training dtype, as soon as the layer is
    built, so no rank holds the whole model."""
    if config.train.zero_stage != 3:
        return functools.partial(torch.device, topo.device)  # a torch.device is a context
    import deepspeed

    # The MPU gives DeepSpeed's config check the data-parallel size (not the world size).
    return functools.partial(deepspeed.zero.Init, config_dict_or_path=copy.deepcopy(ds_config),
                             mpu=MegatronMPU(topo), data_parallel_group=topo.process_groups.data)


def build_model(config: Config, topo: Topology, ds_config: dict) -> GPT:
    """This rank's GPT (its tensor and expert slice; under ZeRO-3 its partition only)."""
    t = config.train
    return GPT(config.model, seed=config.run.seed,
               tensor=TensorSlice(topo.tensor_rank, topo.tensor_size),
               expert=expert_slice(config, topo), loss_chunk_tokens=t.loss_chunk_tokens,
               recompute_layers=t.recompute_layer_ids(config.model.num_layers),
               recompute=t.recompute, sequence_parallel=config.parallel.sequence_parallel,
               build_context=layer_build_context(config, topo, ds_config))


def build_engine(config: Config, topo: Topology, ds_config: dict,
                 log: Callable[[str], None] = lambda _: None
                 ) -> tuple[Any, GuardedAdamW, StepRunner]:
    """The DeepSpeed engine for this layout, its base optimizer, and the step runner."""
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    t = config.train
    check_precision(t.precision, get_accelerator())
    if topo.device.type == "cuda" and t.precision == "fp32":
        # fp32 training's matmuls on the tensor cores as TF32 (fp32 range, 10-bit mantissa).
        # Not under bf16/fp16, whose matmuls are half precision anyway: there the fp32 ones
        # left (the router's, the predictor's) stay exact fp32.
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # Dropout streams: the default one alike on every rank, the tensor-parallel one per TP rank.
    seed_streams(config.run.seed, topo.tensor_rank, topo.device)
    if topo.pipeline_size > 1:
        from modtrain.model.pipeline_layers import AuxGradScale, BlockLayer
        from modtrain.parallel.pipeline_stages import build_pipeline, format_stage_costs

        aux_scale = AuxGradScale()  # kept current by the step runner
        model, table = build_pipeline(config, topo, aux_scale)
        log("pipeline stages (balanced by forward FLOPs):\n" + format_stage_costs(table))
        mpu = None  # the pipeline module carries its own topology
    else:
        model = build_model(config, topo, ds_config)
        mpu = MegatronMPU(topo)
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t)
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config, mpu=mpu,
    )
    if topo.pipeline_size > 1:
        blocks = [m for m in model.modules() if isinstance(m, BlockLayer)]
        return engine, optimizer, PipelineStep(engine, optimizer, blocks,
                                               routing_stat_keys(config), topo.pipeline_size,
                                               aux_scale)
    if topo.data_size == 1 and t.zero_stage == 0:
        # One data-parallel rank without ZeRO: DeepSpeed would still flatten every gradient,
        # all-reduce it over a group of one and copy it back, a few percent of a small step.
        engine.enable_backward_allreduce = False
    if t.zero_stage == 3 and config.model.tie_embeddings:
        # ZeRO-3 gathers a parameter only inside its own module's forward; the tied output
        # projection reads the embedding weight from another module.
        deepspeed.zero.register_external_parameter(model.output_layer, model.embedding.weight)
    if t.zero_stage == 3 and model.loss_chunk_tokens:
        # The chunked loss reads the head weight outside the output layer's forward.
        head = model.embedding if config.model.tie_embeddings else model.output_layer
        deepspeed.zero.register_external_parameter(model, head.weight)
    clipper = (GradientClipper(model, t.grad_clip, topo.process_groups.tensor)
               if modtrain_clips(config) else None)
    return engine, optimizer, EngineStep(engine, optimizer, clipper, build_detector(t),
                                         document_split(config))


def document_split(config: Config) -> DocumentSplit | None:
    """How the step finds each row's documents (data.document_mask, data.reset_positions):
    cut after the tokenizer's EOS, which ends every document of a store."""
    d = config.data
    if not (d.document_mask or d.reset_positions):
        return None
    return functools.partial(split_documents, eos_id=Tokenizer(d.tokenizer).eos_id,
                             mask=d.document_mask, reset_positions=d.reset_positions)
