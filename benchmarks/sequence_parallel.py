"""Activation bytes each tensor rank keeps for backward, and the forward + backward time,
TP=2 with and without sequence parallelism, dense and MoD.

    python -m torch.distributed.run --nproc_per_node 2 --master_addr 127.0.0.1 \\
        benchmarks/sequence_parallel.py [--seqs 1024 2048 4096] [--width 64] [--steps 3]

Times: the median of --steps forward + backward passes of each model after one warm-up,
the two layouts taken in turn step by step in one run, so their ratio is what to read.

Counted as benchmarks/memory.py counts them: torch.autograd.graph.saved_tensors_hooks over
one forward with the loss (batch 1; weights left out; a tensor sharing storage with another
counts once), on rank 0 of 2 gloo ranks (CPU). "blocks" are the tensors saved inside the
decoder blocks, the part sequence parallelism shards; "model" adds the embedding, the final
norm and the vocabulary-parallel loss; "width H" are the block tensors of model width (norm
inputs and outputs, residual stream: what TP alone keeps whole on every rank; the q/k/v,
attention and MLP tensors are split by heads and ffn width already). MoD: capacity 0.125,
every other block routed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from modtrain.config.schema import MoDConfig, ModelConfig  # noqa: E402
from modtrain.model import GPT  # noqa: E402
from modtrain.model.tensor_split import TensorSlice  # noqa: E402
from modtrain.parallel import init_distributed  # noqa: E402

VOCAB = 32000
LAYERS = 4


def model_config(mod: bool, seq: int, width: int) -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, vocab_multiple=128, num_layers=LAYERS,
                       hidden_size=width, num_heads=max(2, width // 32), max_seq_length=seq,
                       mod=MoDConfig(enabled=mod, capacity=0.125))


def saved_bytes(model: GPT, tokens: torch.Tensor) -> tuple[int, int, int]:
    """Bytes saved (inside the blocks of model width, inside the blocks, in the whole
    forward with the loss)."""
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    width = model.config.hidden_size
    seen: dict[int, tuple[int, bool, bool]] = {}
    inside = [False]

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights and storage.data_ptr() not in seen:
            seen[storage.data_ptr()] = (storage.nbytes(), inside[0],
                                        inside[0] and t.dim() == 3 and t.shape[-1] == width)
        return t

    hooks = []
    for block in model.blocks:
        hooks.append(block.register_forward_pre_hook(lambda *_: inside.__setitem__(0, True)))
        hooks.append(block.register_forward_hook(lambda *_: inside.__setitem__(0, False)))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(tokens[:, :-1], tokens[:, 1:]).loss
    loss.backward()
    for hook in hooks:
        hook.remove()
    return (sum(n for n, _, wide in seen.values() if wide),
            sum(n for n, blocks, _ in seen.values() if blocks),
            sum(n for n, _, _ in seen.values()))


def step_seconds(models: list[GPT], tokens: torch.Tensor, steps: int) -> list[float]:
    """Median forward + backward time of each model, taken in turn (one warm-up each)."""
    times: list[list[float]] = [[] for _ in models]
    for i in range(steps + 1):
        for model, out in zip(models, times):
            dist.barrier()
            start = time.perf_counter()
            model(tokens[:, :-1], tokens[:, 1:]).loss.backward()
            dist.barrier()
            if i:
                out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model")
    args = parser.parse_args()
    topo = init_distributed(2, deepspeed_comm=False)
    tensor = TensorSlice(topo.tensor_rank, topo.tensor_size)
    lines = ["model | S | width H: TP=2 / +SP (MiB) | ratio | blocks: TP=2 / +SP (MiB) | "
             "ratio | model: TP=2 / +SP (MiB) | ratio | step: TP=2 / +SP (ms) | ratio"]
    for mod in (False, True):
        for seq in args.seqs:
            config = model_config(mod, seq, args.width)
            tokens = torch.randint(0, VOCAB, (1, seq + 1),
                                   generator=torch.Generator().manual_seed(0))
            models = [GPT(config, seed=0, tensor=tensor, sequence_parallel=sp)
                      for sp in (False, True)]
            tp, sp = (saved_bytes(model, tokens) for model in models)
            cells = [f"{a / 2**20:.1f} / {b / 2**20:.1f} | {b / a:.2f}" for a, b in zip(tp, sp)]
            t_tp, t_sp = step_seconds(models, tokens, args.steps)
            cells.append(f"{t_tp * 1e3:.0f} / {t_sp * 1e3:.0f} | {t_sp / t_tp:.2f}")
            lines.append(f"{'MoD 0.125' if mod else 'dense'} | {seq} | " + " | ".join(cells))
    if dist.get_rank() == 0:
        print(f"activation bytes rank 0 of TP=2 keeps (batch 1, {LAYERS} layers, width "
              f"{args.width}, vocabulary {VOCAB})")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
