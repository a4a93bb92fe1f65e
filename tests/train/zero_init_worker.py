"""Builds GPT as the engine does (`build_model`) under ZeRO-3 and saves, per rank, the most
tensor bytes alive at once during construction, this rank's partition, (gathered) this tensor
rank's full weights, the sizes of the optimizer's parameter groups, and the loss the engine
(`build_engine`) computes on `fixed_batch`.

Run under torchrun: python -m torch.distributed.run --nproc_per_node 2 zero_init_worker.py
OUT_PREFIX override [override ...]
"""

from __future__ import annotations

import sys

import deepspeed
import torch
import torch.distributed as dist

from modtrain.config import Config, load_config
from modtrain.parallel import init_distributed
from modtrain.train.ds_config import deepspeed_config
from modtrain.train.engine import build_engine, build_model
from modtrain.train.optim import build_optimizer
from tests.model.live_bytes import LiveBytes


def fixed_batch(config: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (tokens, labels) on every rank: tensor ranks need identical inputs, and data
    ranks given the same rows compute one process's loss."""
    gen = torch.Generator().manual_seed(7)
    rows = torch.randint(config.model.vocab_size, (config.train.micro_batch_size,
                                                   config.data.seq_length + 1), generator=gen)
    return rows[:, :-1], rows[:, 1:]


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
    del model, params
    engine, _, _ = build_engine(config, topo, ds_config)
    tokens, labels = fixed_batch(config)
    with torch.no_grad():
        loss = engine(tokens, labels).loss.float()
    print(f"rank {dist.get_rank()}: peak {counter.peak / 2**20:.2f} MiB of tensors alive, "
          f"partition {partition / 2**20:.2f} MiB, loss {loss:.6f}", flush=True)
    torch.save({"peak": counter.peak, "partition": partition, "weights": weights,
                "groups": groups, "tensor_rank": topo.tensor_rank, "loss": loss},
               f"{prefix}{dist.get_rank()}.pt")
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
