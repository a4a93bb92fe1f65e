"""One forward/backward per case with TP=2 and sequence parallelism, and with TP=2 alone;
rank 0 saves full parameters, gradients and the routed blocks' top-k indices of both ranks.

Run under torchrun: python -m torch.distributed.run --nproc_per_node 2 sp_step_worker.py
OUT CASES_JSON  (CASES_JSON: {case name: [override, ...]})
"""

from __future__ import annotations

import json
import sys

import torch
import torch.distributed as dist

from modtrain.config import load_config
from modtrain.model import GPT
from modtrain.model.blocks import _attention_and_mlp
from modtrain.model.rng import seed_streams
from modtrain.model.tensor_split import TensorSlice, merge
from modtrain.parallel import init_distributed
from tests.parallel.tp_step_worker import batch, gather


def step(config, topo, sequence_parallel: bool) -> dict:
    group = topo.groups.tensor
    model = GPT(config.model, seed=7, tensor=TensorSlice(topo.tensor_rank, topo.tensor_size),
                recompute_layers=config.train.recompute_layer_ids(config.model.num_layers),
                sequence_parallel=sequence_parallel)
    tokens = batch(config.model.vocab_size, config.data.seq_length)
    result = model(tokens[:, :-1], tokens[:, 1:])
    result.loss.backward()
    out = {
        "loss": result.loss.detach(),
        "stats": {k: v.detach() for k, v in result.stats.items()},
        "grads": {name: merge(gather(p.grad, group), name) for name, p in model.named_parameters()},
        # Every rank's selection of the whole rows, per routed block.
        "index": [gather(b.last_index, group) for b in model.blocks if b.routed],
    }
    # All-tied router scores: the tie rule (lowest positions first) must hold on the shards.
    with torch.no_grad():
        for block in model.blocks:
            if block.routed:
                block.router.proj.weight.zero_()
        model(tokens[:, :-1], tokens[:, 1:])
    out["tied_index"] = [gather(b.last_index, group) for b in model.blocks if b.routed]
    return out


def dropout_masks(config, topo, sequence_parallel: bool) -> list[torch.Tensor]:
    """Both ranks' hidden-dropout mask (zeros of the MLP output) of block 0 at p = 0.5."""
    config.model.dropout = 0.5
    seed_streams(7, topo.tensor_rank, torch.device("cpu"))
    torch.manual_seed(7)
    model = GPT(config.model, seed=7, tensor=TensorSlice(topo.tensor_rank, topo.tensor_size),
                sequence_parallel=sequence_parallel)
    # A shard of other tokens on each rank under SP, the same tokens on both under TP alone.
    seq = config.data.seq_length // (topo.tensor_size if sequence_parallel else 1)
    x = torch.randn(seq, 2, config.model.hidden_size, generator=torch.Generator().manual_seed(
        topo.tensor_rank if sequence_parallel else 0))
    rope = model._rope.window(0, config.data.seq_length)
    _, _, mlp = _attention_and_mlp(model.blocks[0].layer, x, rope)
    return gather((mlp == 0).to(torch.uint8), topo.groups.tensor)


def main(out: str, cases: dict[str, list[str]]) -> None:
    topo = None
    results = {}
    for name, overrides in cases.items():
        config = load_config(None, overrides)
        if topo is None:
            topo = init_distributed(config.parallel.tensor, deepspeed_comm=False)
        results[name] = {"sp": step(config, topo, True), "tp": step(config, topo, False)}
    results["dropout"] = {"sp": dropout_masks(config, topo, True),
                          "tp": dropout_masks(config, topo, False)}
    if dist.get_rank() == 0:
        torch.save(results, out)
    dist.barrier()


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
