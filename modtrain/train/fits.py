"""Whether a model's weights, gradients and optimizer states can fit on a rank at all,
checked before DeepSpeed builds anything (with the planner's formulas, model/cost.py)."""

from __future__ import annotations

import socket

import psutil
import torch

from modtrain.config import Config
from modtrain.errors import ModtrainError
from modtrain.model.cost import Layout, ModelStates, model_state_bytes, rank_params
from modtrain.parallel import collectives
from modtrain.parallel.distributed import Topology

GIB = 1 << 30


def model_states(config: Config, topo: Topology) -> ModelStates:
    """Bytes per rank of weights, gradients and Adam states on this run's layout."""
    layout = Layout(tensor=topo.tensor_size, pipeline=topo.pipeline_size, data=topo.data_size,
                    expert=config.parallel.expert if config.model.moe.enabled else 1,
                    zero_stage=config.train.zero_stage,
                    precision="fp32" if config.train.precision == "fp32" else "bf16")
    return model_state_bytes(rank_params(config.model, layout), layout)


def rank_memory(device: torch.device) -> int:
    """Bytes one rank may use: its GPU's memory, or its share of the host's memory among
    the ranks on this host (collective)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    hosts = collectives.gather_objects(socket.gethostname())
    return psutil.virtual_memory().total // hosts.count(socket.gethostname())


def check_fits(config: Config, topo: Topology) -> None:
    """Refuse, in one line with the estimate, a model whose states alone exceed a rank's
    memory (activations, buffers and fragmentation come on top: a run that passes may still
    not fit; `modtrain plan` estimates those). Collective on CPU."""
    need = model_states(config, topo)
    have = rank_memory(topo.device)
    if need.total <= have:
        return
    t = config.train
    raise ModtrainError(
        f"this model needs {need.total / GIB:.1f} GiB per rank for its weights, gradients "
        f"and optimizer states alone ({need.params / GIB:.1f} + {need.grads / GIB:.1f} + "
        f"{need.optim / GIB:.1f} GiB at train.precision={t.precision}, "
        f"train.zero_stage={t.zero_stage}, "
        f"{topo.tensor_size}x{topo.pipeline_size}x{topo.data_size} "
        f"TPxPPxDP) and a rank has {have / GIB:.1f} GiB; shard it further (a higher "
        "train.zero_stage, more ranks, parallel.tensor or parallel.pipeline) or make it "
        "smaller; `modtrain plan CONFIG --gpus N` lists the layouts that fit")
