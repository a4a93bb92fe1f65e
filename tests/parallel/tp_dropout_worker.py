"""A train-mode forward with dropout under tensor parallelism; rank 0 saves what each TP
rank's first attention saw and drew, and each rank's loss.

Run under torchrun: python -m torch.distributed.run --nproc_per_node 2 tp_dropout_worker.py
OUT override [override ...]
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
from tests.parallel.tp_step_worker import batch, gather


def main(out: str, overrides: list[str]) -> None:
    config = load_config(None, overrides)
    topo = init_distributed(config.parallel.tensor, deepspeed_comm=False)
    tensor = TensorSlice(topo.tensor_rank, topo.tensor_size)
    model = GPT(config.model, seed=7, tensor=tensor).train()
    torch.manual_seed(7)  # what the trainer does, then build_engine seeds the TP stream
    seed_streams(7, topo.tensor_rank, topo.device)
    seen = []
    core = model.blocks[0].layer.self_attention.core_attention
    core.register_forward_hook(lambda _m, args, output: seen.append((*args[:3], output)))
    tokens = batch(config.model.vocab_size, config.data.seq_length)
    loss = model(tokens[:, :-1], tokens[:, 1:]).loss.detach().reshape(1)
    group = topo.groups.tensor
    first = [torch.stack(gather(t.detach(), group)) for t in seen[0]]
    losses = torch.cat(gather(loss, group))
    if dist.get_rank() == 0:
        torch.save({"attention": first, "losses": losses}, out)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
