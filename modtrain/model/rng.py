"""The tensor-parallel RNG stream: dropout on head-split activations draws under its fork.

Inside a tensor-parallel region (attention over this rank's heads) each TP rank holds
different activations, so its dropout mask must differ from the other ranks'; outside it
(after the row-parallel all-reduce) activations are replicated and every TP rank must draw
the same mask. megatron-core keeps the two apart with named RNG states: the default stream,
seeded alike on every rank, and "model-parallel-rng", seeded seed + 2718 + tp_rank, entered
with `fork()`. Its tracker swaps CUDA generator state; on CPU `CPURNGStatesTracker` does
the same with the CPU generator, under the same names and seeds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from megatron.core.tensor_parallel import random as megatron_random

TENSOR_PARALLEL = megatron_random._MODEL_PARALLEL_RNG_TRACKER_NAME  # "model-parallel-rng"
DATA_PARALLEL = megatron_random._DATA_PARALLEL_RNG_TRACKER_NAME
SEED_OFFSET = 2718  # megatron-core's: the tensor-parallel seed is seed + 2718 + tp_rank


class CPURNGStatesTracker:
    """megatron-core's CudaRNGStatesTracker (add, fork, get/set_states) on the CPU generator."""

    def __init__(self) -> None:
        self.states: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        self.states = {}

    def is_initialized(self) -> bool:
        return bool(self.states)

    def get_states(self) -> dict[str, torch.Tensor]:
        return {name: state.clone() for name, state in self.states.items()}

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self.states = {name: state.clone() for name, state in states.items()}

    def add(self, name: str, seed: int) -> None:
        if name in self.states:
            raise ValueError(f"RNG state {name} already exists")
        outer = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states[name] = torch.get_rng_state()
        torch.set_rng_state(outer)

    @contextlib.contextmanager
    def fork(self, name: str = TENSOR_PARALLEL) -> Iterator[None]:
        """Draw from state `name` inside the block; the default stream is left where it was."""
        outer = torch.get_rng_state()
        torch.set_rng_state(self.states[name])
        try:
            yield
        finally:
            self.states[name] = torch.get_rng_state()
            torch.set_rng_state(outer)


_CPU_TRACKER = CPURNGStatesTracker()


def rng_tracker(device: torch.device):
    """The tracker whose states drive dropout on `device` (megatron-core's on CUDA)."""
    return megatron_random.get_cuda_rng_tracker() if device.type == "cuda" else _CPU_TRACKER


def seed_streams(seed: int, tensor_rank: int, device: torch.device) -> None:
    """Seed the tensor-parallel stream with seed + 2718 + tensor_rank on `device`
    (megatron-core's model_parallel_cuda_manual_seed; on CUDA it also seeds the default
    stream with `seed`, which torch.manual_seed(seed) has done on CPU already)."""
    if device.type == "cuda":
        megatron_random.model_parallel_cuda_manual_seed(seed, tp_rank=tensor_rank, ep_rank=0,
                                                        etp_rank=0, force_reset_rng=True)
        return
    _CPU_TRACKER.reset()
    _CPU_TRACKER.add(DATA_PARALLEL, seed)
    _CPU_TRACKER.add(TENSOR_PARALLEL, seed + SEED_OFFSET + tensor_rank)


def tensor_parallel_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """Enter the tensor-parallel stream on `device`; a no-op until seed_streams has run."""
    tracker = rng_tracker(device)
    if not tracker.is_initialized():
        return contextlib.nullcontext()
    return tracker.fork(TENSOR_PARALLEL)
