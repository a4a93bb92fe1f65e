"""Builds GPT as the engine does (`build_model`) under ZeRO-3 and saves, per rank, the most
tensor bytes alive at once during construction, this rank's partition, and (gathered) the
full weights, and the sizes of the optimizer's parameter groups.

Run under torchrun: python -m torch.distributed.run --nproc_per_node 2 zero_init_worker.py
OUT_PREFIX override [override ...]
"""

from __future__ import annotations

import sys

import deepspeed
import torch
import torch.distributed as dist

from modtrain.config import load_config
from modtrain.parallel import init_distributed
from modtrain.train.ds_config import deepspeed_config
from modtrain.train.engine import build_model
from modtrain.train.optim import build_optimizer
from tests.model.live_bytes import LiveBytes


def main(prefix: str, overrides: list[str]) -> None:
    config = load_config(None, overrides)
    topo = init_distributed(config.parallel.tensor)
    ds_config = deepspeed_config(config, topo.data_size, cuda=False)
    with LiveBytes() as counter:
        model = build_model(config, topo, ds_config)
    partition = sum(p.ds_tensor.numel() * p.ds_tensor.element_size()
                    for p in model.parameters())
    groups = [len(g["params"]) for g in build_optimizer(model, config.train).param_groups]
    params = list(model.parameters())
    with deepspeed.zero.GatheredParameters(params):
        weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    print(f"rank {dist.get_rank()}: peak {counter.peak / 2**20:.2f} MiB of tensors alive, "
          f"partition {partition / 2**20:.2f} MiB", flush=True)
    torch.save({"peak": counter.peak, "partition": partition, "weights": weights,
                "groups": groups},
               f"{prefix}{dist.get_rank()}.pt")
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
