"""A train-mode forward and backward with dropout under tensor parallelism, once per
train.recompute mode; each rank saves its loss and gradients per mode.

Run under torchrun: python -m torch.distributed.run --nproc_per_node 2 recompute_worker.py
OUT_PREFIX override [override ...]
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.model.rng import seed_streams
from modtrain.model.tensor_split import TensorSlice
from modtrain.parallel import init_distributed
from tests.parallel.tp_step_worker import batch


def main(prefix: str, overrides: list[str]) -> None:
    config = load_config(None, overrides)
    topo = init_distributed(config.parallel.tensor, deepspeed_comm=False)
    tokens = batch(config.model.vocab_size, config.data.seq_length)
    saved = {}
    for mode in ("none", "selective", "full"):
        layers = range(config.model.num_layers) if mode != "none" else ()
        model = GPT(config.model, seed=7, tensor=TensorSlice(topo.tensor_rank, topo.tensor_size),
                    recompute_layers=layers, recompute=mode).train()
        torch.manual_seed(7)  # what the trainer does, then build_engine seeds the TP stream
        seed_streams(7, topo.tensor_rank, topo.device)
        loss = model(tokens[:, :-1], tokens[:, 1:]).loss
        loss.backward()
        saved[mode] = {"loss": loss.detach(),
                       "grads": {n: p.grad for n, p in model.named_parameters()}}
    torch.save(saved, f"{prefix}{dist.get_rank()}.pt")
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
