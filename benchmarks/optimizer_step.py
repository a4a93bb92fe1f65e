"""AdamW's step over a model's parameters: torch's implementations side by side.

    python benchmarks/optimizer_step.py [--threads 1] [--steps 50] [key=value ...]

The parameters of modtrain's GPT for the config (configs/shakespeare_dense.yaml by
default, with its 67-token vocabulary), random gradients, and one torch.optim.AdamW per
implementation: the per-parameter loop (`foreach=False`, torch's default on a CPU),
multi-tensor (`foreach=True`) and fused (`fused=True`, what modtrain's optimizer uses where
the device has it). Steps alternate between the implementations; the table gives the
median milliseconds of each and its speed relative to the loop.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
from model_step import timing_arguments, timing_setup  # noqa: E402

from modtrain.model import GPT  # noqa: E402
from modtrain.model.param_table import parameter_count  # noqa: E402

IMPLEMENTATIONS = {"per-parameter loop": {"foreach": False}, "multi-tensor": {"foreach": True},
                   "fused": {"fused": True}}


def main() -> None:
    parser = timing_arguments(__doc__.split("\n")[0], steps=50, warmup=3)
    args = parser.parse_intermixed_args()  # key=value overrides before or after options
    _, config = timing_setup(args)
    torch.manual_seed(0)
    models = {name: GPT(config.model) for name in IMPLEMENTATIONS}
    optimizers = {}
    for name, kwargs in IMPLEMENTATIONS.items():
        params = list(models[name].parameters())
        for p in params:
            p.grad = torch.randn_like(p)
        optimizers[name] = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.1, **kwargs)
    for _ in range(args.warmup):
        for optimizer in optimizers.values():
            optimizer.step()
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for _ in range(args.steps):
        for name, optimizer in optimizers.items():
            start = time.perf_counter()
            optimizer.step()
            times[name].append(time.perf_counter() - start)
    m = config.model
    print(f"shape: {m.num_layers} layers, width {m.hidden_size}, "
          f"{parameter_count(m):,} parameters in {len(list(models['fused'].parameters()))} "
          f"tensors; {args.threads} thread(s), median of {args.steps}")
    print("| AdamW implementation | step ms | speed vs per-parameter loop |\n|---|---|---|")
    loop = statistics.median(times["per-parameter loop"])
    for name, samples in times.items():
        ms = statistics.median(samples)
        print(f"| {name} | {1e3 * ms:.2f} | {loop / ms:.2f}x |")


if __name__ == "__main__":
    main()
