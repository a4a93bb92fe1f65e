"""Process-group setup shared by every entry point: one process or many, CPU or GPU.

A single process still gets a (world size 1) process group, because megatron-core's
parallel layers read their tensor-parallel group from `parallel_state`.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any

import torch

from modtrain import launcher
from modtrain.errors import ModtrainError


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def select_accelerator() -> str:
    """Pick DeepSpeed's accelerator before deepspeed is imported: cuda if present, else cpu."""
    if "DS_ACCELERATOR" not in os.environ:
        os.environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.is_available() else "cpu"
    return os.environ["DS_ACCELERATOR"]


def device_index(local_rank: int, visible: int) -> int:
    """The CUDA device a rank uses among the `visible` ones it sees.

    One device per process (`srun --gpus-per-task=1`) shows every rank device 0; a node's
    devices shared by its ranks (deepspeed, torchrun) are taken in local-rank order.
    """
    if visible < 1:
        raise ModtrainError("DS_ACCELERATOR=cuda but this process sees no CUDA device; check "
                            "CUDA_VISIBLE_DEVICES and the launcher's GPU binding")
    return local_rank % visible


def skip_shm_comm_op() -> None:
    """Keep DeepSpeed's CPU backend from building and loading its shared-memory comm op.

    DeepSpeed 0.19's TorchBackend JIT-builds `deepspeed_shm_comm` at every initialisation
    (comm/torch.py, build_shm_op) for `inference_all_reduce` alone, which training never
    calls; a build killed mid-way leaves a lock every later start waits on forever. That
    function builds only an op `deepspeed.ops.__compatible_ops__` marks compatible, and
    DeepSpeed keeps that dict for edits; seeding the entry also spares its compiler probe.
    """
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    compatible = vars(deepspeed.ops).setdefault("__compatible_ops__", {})
    compatible[ShareMemCommBuilder.NAME] = False


@dataclass(frozen=True)
class ParallelGroups:
    """The process groups of each parallel dimension (megatron-core creates them)."""

    tensor: Any
    pipeline: Any
    data: Any


@dataclass(frozen=True)
class Topology:
    """This process's place in the layout: sizes, its coordinates, and the groups.

    Created once by `init_distributed` and passed to whatever depends on the layout, so
    nothing reads megatron-core's global parallel state back.
    """

    rank: int
    world_size: int
    local_rank: int
    tensor_size: int  # processes in this rank's tensor-parallel group
    pipeline_size: int  # pipeline stages
    data_size: int  # data-parallel replicas
    device: torch.device
    tensor_rank: int = 0
    pipeline_rank: int = 0
    data_rank: int = 0
    groups: ParallelGroups | None = field(default=None, compare=False, repr=False)

    @property
    def process_groups(self) -> ParallelGroups:
        """The groups, which init_distributed always sets (a Topology built by hand in a
        test has none)."""
        if self.groups is None:
            raise RuntimeError("this Topology has no process groups (made by init_distributed)")
        return self.groups


DEFAULT_TIMEOUT_MINUTES = 30  # torch's gloo default and megatron-core's


def init_distributed(tensor: int = 1, pipeline: int = 1, deepspeed_comm: bool = True,
                     timeout_minutes: int = DEFAULT_TIMEOUT_MINUTES) -> Topology:
    """Initialise torch.distributed and megatron-core's parallel state.

    Training goes through DeepSpeed's communication layer (its engine requires it);
    inference (`deepspeed_comm=False`) uses torch.distributed alone. A collective that
    waits longer than `timeout_minutes` (parallel.timeout_minutes) fails instead of hanging.
    """
    launch = launcher.detect()  # torchrun, deepspeed, srun, mpirun or one process
    if launch.master_port is None:  # one process: any free loopback port
        launch = replace(launch, master_port=_free_port())
    # DeepSpeed and torch read env://; with all five set, DeepSpeed skips its MPI discovery.
    launcher.export(launch)
    accelerator = select_accelerator()
    import deepspeed
    from megatron.core import parallel_state

    world_size = launch.world_size
    if world_size % (tensor * pipeline):
        raise ModtrainError(
            f"world size {world_size} is not divisible by parallel.tensor x parallel.pipeline "
            f"= {tensor} x {pipeline}; launch a multiple of {tensor * pipeline} processes"
        )
    local_rank = launch.local_rank
    device, backend = _bind_device(accelerator, local_rank)
    timeout = timedelta(minutes=timeout_minutes)
    if not torch.distributed.is_initialized():
        if deepspeed_comm:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False,
                                       timeout=timeout)
        else:
            torch.distributed.init_process_group(backend, timeout=timeout)
    if not parallel_state.model_parallel_is_initialized():
        # No extra gloo copies of the data-parallel groups: they serve megatron-core's own
        # distributed optimizer, which modtrain does not use (DeepSpeed's ZeRO instead), and
        # every gloo group keeps an event-loop thread that wakes every 10 ms.
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tensor, pipeline_model_parallel_size=pipeline,
            create_gloo_process_groups=False, distributed_timeout_minutes=timeout_minutes,
        )
    return _topology(world_size, local_rank, tensor, pipeline, device)


def _bind_device(accelerator: str, local_rank: int) -> tuple[torch.device, str]:
    """This rank's device and its collective backend (NCCL on a GPU, gloo on the CPU)."""
    if accelerator == "cuda":
        index = device_index(local_rank, torch.cuda.device_count())
        os.environ["LOCAL_RANK"] = str(index)  # DeepSpeed binds its engine to this device
        torch.cuda.set_device(index)
        return torch.device("cuda", index), "nccl"
    skip_shm_comm_op()
    return torch.device("cpu"), "gloo"


def _topology(world_size: int, local_rank: int, tensor: int, pipeline: int,
              device: torch.device) -> Topology:
    """This rank's Topology, read once from megatron-core's initialised parallel state."""
    from megatron.core import parallel_state as ps

    return Topology(
        rank=torch.distributed.get_rank(),
        world_size=world_size,
        local_rank=local_rank,
        tensor_size=tensor,
        pipeline_size=pipeline,
        data_size=world_size // (tensor * pipeline),
        device=device,
        tensor_rank=ps.get_tensor_model_parallel_rank(),
        pipeline_rank=ps.get_pipeline_model_parallel_rank(),
        data_rank=ps.get_data_parallel_rank(),
        groups=ParallelGroups(
            tensor=ps.get_tensor_model_parallel_group(),
            pipeline=ps.get_pipeline_model_parallel_group(),
            data=ps.get_data_parallel_group(),
        ),
    )


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
