"""One pipeline-parallel training step (DeepSpeed pipeline engine); every rank saves the
gradients it accumulated, under GPT parameter names.

Run under the deepspeed launcher: pp_step_worker.py OUT_DIR override [override ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from modtrain.config import load_config
from modtrain.model.param_table import gpt_name
from modtrain.parallel import init_distributed
from modtrain.train.ds_config import deepspeed_config
from modtrain.train.engine import build_engine
from tests.parallel.tp_step_worker import batch


def main(out: str, overrides: list[str]) -> None:
    config = load_config(None, overrides)
    topo = init_distributed(config.parallel.tensor, config.parallel.pipeline)
    ds_config = deepspeed_config(config, topo.data_size)
    engine, optimizer, stepper = build_engine(config, topo, ds_config)
    optimizer.skip_next = True  # keep the weights: only the gradients are compared
    module = engine.module
    names = {id(p): gpt_name(n, config.model.num_layers) for n, p in module.named_parameters()}
    grads: dict[str, torch.Tensor] = {}

    def capture(p: torch.Tensor) -> None:  # runs after each micro-batch's accumulation
        grads[names[id(p)]] = p.grad.detach().clone()

    for p in module.parameters():
        p.register_post_accumulate_grad_hook(capture)
    tokens = batch(config.model.vocab_size, config.data.seq_length).numpy()
    micro = config.train.micro_batch_size
    outcome = stepper.train([tokens[i : i + micro] for i in range(0, len(tokens), micro)], False)
    weights = {gpt_name(n, config.model.num_layers): p.detach().clone()
               for n, p in module.named_parameters()}
    torch.save({"loss": outcome.loss, "grads": grads, "weights": weights,
                "stage": topo.rank}, Path(out) / f"rank{dist.get_rank()}.pt")
    dist.barrier()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--local_rank")]  # launcher's flag
    main(args[0], args[1:])
