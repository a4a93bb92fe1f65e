"""Process-group setup shared by every entry point: one process or many, CPU or GPU.

A single process still gets a (world size 1) process group, because megatron-core's
parallel layers read their tensor-parallel group from `parallel_state`.
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from modtrain import launcher
from modtrain.errors import ModtrainError
from modtrain.parallel import collectives


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def select_accelerator() -> str:
    """Pick DeepSpeed's accelerator before deepspeed is imported: cuda if present, else cpu."""
    if "DS_ACCELERATOR" not in os.environ:
        os.environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.is_available() else "cpu"
    return os.environ["DS_ACCELERATOR"]


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
    tensor: int
    pipeline: int
    data: int
    device: torch.device
    tensor_rank: int = 0
    pipeline_rank: int = 0
    data_rank: int = 0
    groups: ParallelGroups | None = field(default=None, compare=False, repr=False)


def init_distributed(tensor: int = 1, pipeline: int = 1, deepspeed_comm: bool = True) -> Topology:
    """Initialise torch.distributed and megatron-core's parallel state.

    Training goes through DeepSpeed's communication layer (its engine requires it);
    inference (`deepspeed_comm=False`) uses torch.distributed alone.
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
    if accelerator == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    if not torch.distributed.is_initialized():
        if deepspeed_comm:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
            if accelerator == "cpu":
                _unlink_shm_allreduce_buffer()
        else:
            torch.distributed.init_process_group(backend)
    if not parallel_state.model_parallel_is_initialized():
        # No extra gloo copies of the data-parallel groups: they serve megatron-core's own
        # distributed optimizer, which modtrain does not use (DeepSpeed's ZeRO instead), and
        # every gloo group keeps an event-loop thread that wakes every 10 ms.
        parallel_state.initialize_model_parallel(
            tensor_model_parallel_size=tensor, pipeline_model_parallel_size=pipeline,
            create_gloo_process_groups=False,
        )
    ps = parallel_state
    return Topology(
        rank=torch.distributed.get_rank(),
        world_size=world_size,
        local_rank=local_rank,
        tensor=tensor,
        pipeline=pipeline,
        data=world_size // (tensor * pipeline),
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


def _unlink_shm_allreduce_buffer() -> None:
    """Remove the name of this rank's DeepSpeed CPU shared-memory all-reduce buffer.

    DeepSpeed's CPU backend creates a 66 MB /dev/shm segment per rank when all ranks are on
    one host and never unlinks it, so every multi-process CPU run would leave them behind.
    Once every rank has mapped every segment (done inside init), the names are not needed:
    the memory lives until the last process unmaps it at exit.
    """
    collectives.barrier()
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{torch.distributed.get_rank()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(Path("/dev/shm") / name)


def destroy_distributed() -> None:
    from megatron.core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
