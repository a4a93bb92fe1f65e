"""One forward/backward of a GPT under tensor parallelism; rank 0 saves full tensors.

Run under torchrun: python -m torch.distributed.run --nproc_per_node N tp_step_worker.py
OUT override [override ...]
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.model.tensor_split import TensorSlice, merge
from modtrain.parallel import init_distributed


def batch(vocab_size: int, seq: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (4, seq + 1), generator=torch.Generator().manual_seed(0))


def gather(t: torch.Tensor, group) -> list[torch.Tensor]:
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, t.contiguous(), group=group)
    return parts


def routing_agrees(model: GPT, group) -> bool:
    same = True
    for block in model.blocks:
        if block.routed:
            parts = gather(block.last_index, group)
            same = same and all(torch.equal(parts[0], p) for p in parts)
    return same


def main(out: str, overrides: list[str]) -> None:
    config = load_config(None, overrides)
    topo = init_distributed(config.parallel.tensor, deepspeed_comm=False)
    group = topo.groups.tensor
    model = GPT(config.model, seed=7, tensor=TensorSlice(topo.tensor_rank, topo.tensor_size),
                loss_chunk_tokens=config.train.loss_chunk_tokens,
                recompute_layers=config.train.recompute_layer_ids(config.model.num_layers))
    tokens = batch(config.model.vocab_size, config.data.seq_length)
    result = model(tokens[:, :-1], tokens[:, 1:])
    result.loss.backward()
    full = {
        name: (merge(gather(p.detach(), group), name), merge(gather(p.grad, group), name))
        for name, p in model.named_parameters()
    }
    agrees = routing_agrees(model, group)
    # All-tied router scores: top-k must still pick the same tokens on every rank.
    with torch.no_grad():
        for block in model.blocks:
            if block.routed:
                block.router.proj.weight.zero_()
        model(tokens[:, :-1], tokens[:, 1:])
    ties_agree = routing_agrees(model, group)
    if dist.get_rank() == 0:
        torch.save({"loss": result.loss.detach(), "lm_loss": result.lm_loss.detach(),
                    "params": full, "routing_agrees": agrees, "ties_agree": ties_agree}, out)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
