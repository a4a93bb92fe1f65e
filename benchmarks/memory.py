"""Activation memory and step time by recomputation mode and loss chunking, dense and MoD.

    python benchmarks/memory.py [--seqs 1024 4096] [--width 64] [--steps 10] [--threads 1]
                                [--block-seqs 1024 2048 4096 8192] [--block-width 64]

Table 1: the bytes one micro-batch (batch 1) keeps for backward, counted with
torch.autograd.graph.saved_tensors_hooks over the model's forward with the loss (weights
left out; a tensor that shares storage with another counts once), for train.recompute
none, selective and full, with and without train.loss_chunk_tokens, dense and MoD (capacity
0.125, every other block routed), at each --seqs. Only the tensors autograd saves are
counted, not the transient ones (the [tokens, V] logits of the full loss are both).

Table 2: forward + backward milliseconds of each mode on one small model, the modes run
in turn step by step in this one process (so a slow phase of the machine hits all alike);
the median of --steps, and the ratio to recompute none.

Table 3 (long context): one dense block and one routed block (MoD, capacity 0.125, with
its router and predictor) at each --block-seqs (batch 1, no recomputation): the bytes each
keeps for backward (counted as in table 1), their forward FLOPs (model/flops.py) and
their measured forward + backward milliseconds (median of --steps), routed over dense.
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
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402

from modtrain.config.schema import MoDConfig, ModelConfig  # noqa: E402
from modtrain.model import GPT  # noqa: E402
from modtrain.model.flops import block_flops, routed_block_flops  # noqa: E402
from modtrain.model.rope import Rope  # noqa: E402
from modtrain.parallel import init_distributed  # noqa: E402

VOCAB = 32000
LAYERS = 4
CHUNK = 1024
MODES = {  # name: (train.recompute of every block, loss chunk tokens)
    "none": ("none", 0),
    "none + chunked loss": ("none", CHUNK),
    "selective": ("selective", 0),
    "selective + chunked loss": ("selective", CHUNK),
    "full": ("full", 0),
    "full + chunked loss": ("full", CHUNK),
}


def model_config(mod: bool, seq: int, width: int) -> ModelConfig:
    return ModelConfig(vocab_size=VOCAB, num_layers=LAYERS, hidden_size=width,
                       num_heads=max(1, width // 32), max_seq_length=seq,
                       mod=MoDConfig(enabled=mod, capacity=0.125))


def build(config: ModelConfig, mode: str) -> GPT:
    recompute, chunk = MODES[mode]
    layers = range(config.num_layers) if recompute != "none" else ()
    return GPT(config, seed=0, loss_chunk_tokens=chunk, recompute_layers=layers,
               recompute=recompute)


def saved_bytes(model: GPT, tokens: torch.Tensor) -> int:
    """Bytes autograd keeps from forward to backward for one batch (weights left out)."""
    pack, seen = _kept_bytes({p.untyped_storage().data_ptr() for p in model.parameters()})
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(tokens[:, :-1], tokens[:, 1:]).loss
    loss.backward()
    return sum(seen.values())


def _kept_bytes(weights: set[int]):
    """A saved_tensors_hooks pack function and the {storage: bytes} it fills."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    return pack, seen


def block_cost(model: GPT, index: int, x: torch.Tensor, steps: int) -> tuple[int, float]:
    """(bytes block `index` keeps for backward of input x [S, 1, H], median seconds of its
    forward + backward over `steps` after one warm-up)."""
    block = model.blocks[index]
    rope = Rope.table(x.shape[0], model.config.hidden_size // model.config.num_heads,
                      model.config.rope_base)
    pack, seen = _kept_bytes({p.untyped_storage().data_ptr() for p in model.parameters()})
    times = []
    for step in range(steps + 1):  # bytes counted in the warm-up step only, times after it
        x.grad = None
        start = time.perf_counter()
        with torch.autograd.graph.saved_tensors_hooks(pack if step == 0 else (lambda t: t),
                                                      lambda t: t):
            out, aux, _ = block(x, rope)
        (out.sum() + (0.0 if aux is None else aux)).backward()
        if step:
            times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    return sum(seen.values()), statistics.median(times)


def block_table(seqs: list[int], width: int, steps: int) -> list[str]:
    lines = ["S | dense block (MiB) | routed block (MiB) | bytes routed/dense | "
             "FLOPs routed/dense | ms dense | ms routed | time routed/dense"]
    for seq in seqs:
        config = ModelConfig(vocab_size=256, num_layers=2, hidden_size=width,
                             num_heads=max(1, width // 32), max_seq_length=seq,
                             mod=MoDConfig(enabled=True, capacity=0.125))  # block 1 routed
        model = GPT(config, seed=0)
        x = torch.randn(seq, 1, width, requires_grad=True)
        dense, dense_s = block_cost(model, 0, x, steps)
        routed, routed_s = block_cost(model, 1, x, steps)
        flops = routed_block_flops(config, seq) / block_flops(config, seq)
        lines.append(f"{seq} | {dense / 2**20:.1f} | {routed / 2**20:.1f} | "
                     f"{routed / dense:.3f} | {flops:.3f} | {dense_s * 1e3:.1f} | "
                     f"{routed_s * 1e3:.1f} | {routed_s / dense_s:.2f}")
    return lines


def memory_table(seqs: list[int], width: int) -> list[str]:
    lines = ["model | S | " + " | ".join(f"{m} (MiB)" for m in MODES)]
    for mod in (False, True):
        for seq in seqs:
            config = model_config(mod, seq, width)
            tokens = torch.randint(0, VOCAB, (1, seq + 1))
            row = [saved_bytes(build(config, mode), tokens) / 2**20 for mode in MODES]
            lines.append(f"{'MoD 0.125' if mod else 'dense'} | {seq} | "
                         + " | ".join(f"{v:.1f}" for v in row))
    return lines


def time_table(seq: int, width: int, steps: int) -> list[str]:
    config = model_config(False, seq, width)
    models = {mode: build(config, mode) for mode in MODES}
    tokens = torch.randint(0, VOCAB, (2, seq + 1))
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    for step in range(steps + 2):  # two warm-up steps
        for mode, model in models.items():
            start = time.perf_counter()
            model(tokens[:, :-1], tokens[:, 1:]).loss.backward()
            if step >= 2:
                times[mode].append(time.perf_counter() - start)
            model.zero_grad(set_to_none=True)
    base = statistics.median(times["none"])
    lines = [f"mode (dense, S {seq}, width {width}, batch 2) | ms per forward + backward | "
             "ratio to none"]
    for mode, t in times.items():
        lines.append(f"{mode} | {statistics.median(t) * 1e3:.1f} | "
                     f"{statistics.median(t) / base:.2f}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seqs", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--time-seq", type=int, default=512)
    parser.add_argument("--time-width", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--block-seqs", type=int, nargs="*", default=[1024, 2048, 4096, 8192],
                        help="sequence lengths of table 3 (none: skip it)")
    parser.add_argument("--block-width", type=int, default=64)
    parser.add_argument("--skip-modes", action="store_true", help="table 3 only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    init_distributed()
    if args.block_seqs:
        print(f"one dense vs one routed block (capacity 0.125, width {args.block_width}, "
              f"batch 1, median of {args.steps})")
        print("\n".join(block_table(args.block_seqs, args.block_width, args.steps)))
        print()
    if args.skip_modes:
        return
    print(f"activation bytes one micro-batch keeps (batch 1, {LAYERS} layers, width "
          f"{args.width}, vocabulary {VOCAB}, loss chunk {CHUNK} tokens)")
    print("\n".join(memory_table(args.seqs, args.width)))
    print()
    print("\n".join(time_table(args.time_seq, args.time_width, args.steps)))


if __name__ == "__main__":
    main()
