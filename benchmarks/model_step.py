"""The bare model: forward + backward of modtrain's GPT against the plain reference GPT.

    python benchmarks/model_step.py [--threads 1] [--steps 40] [--profile] [key=value ...]
    python benchmarks/model_step.py --engine [train.zero_stage=0] ...   # the whole step

No engine, optimizer, data or logging: the two models of the same shape (the config's, by
default configs/shakespeare_dense.yaml with its 67-token vocabulary) run one forward and
backward each on the same random batch, alternately, `--steps` times after a warm-up. The
table gives the median milliseconds of each and the ratio reference / modtrain (above
1: modtrain is faster), plus the number of aten operators one step of each dispatches.
`--profile` also prints torch.profiler's top operators for both. This separates the
model's own cost from the training step's (benchmarks/framework_tax.py).

`--engine` times the whole training step instead, in this one process: modtrain's
(`modtrain.train.engine.build_engine`: the DeepSpeed engine, its optimizer, the step
runner `modtrain train` uses, with the config's train.zero_stage and train.grad_clip)
against the reference's (forward, backward, torch's clip_grad_norm_, fused AdamW,
zero_grad). Both alternate step by step in one process, so machine-wide slow phases hit
both alike, which separate processes (framework_tax.py) cannot promise.
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
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch  # noqa: E402
from reference_gpt import ReferenceGPT, reference_optimizer  # noqa: E402
from torch.profiler import profile  # noqa: E402

from modtrain.config import Config, load_config  # noqa: E402
from modtrain.model import GPT  # noqa: E402
from modtrain.parallel import Topology, init_distributed  # noqa: E402
from modtrain.train.ds_config import deepspeed_config  # noqa: E402
from modtrain.train.engine import build_engine  # noqa: E402

VOCAB = 67  # tinyshakespeare's characters


def _aten_ops(step) -> tuple[int, object]:
    with profile() as prof:
        step()
    events = prof.key_averages()
    return sum(e.count for e in events if e.key.startswith("aten::")), events


def timing_arguments(description: str, steps: int, warmup: int) -> argparse.ArgumentParser:
    """The options every timing script here shares: the config, its overrides, threads,
    timed and warm-up steps."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("overrides", nargs="*", help="config key=value, e.g. model.hidden_size=512")
    parser.add_argument("--config", default=str(ROOT / "configs" / "shakespeare_dense.yaml"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--warmup", type=int, default=warmup)
    return parser


def timing_setup(args: argparse.Namespace) -> tuple[Topology, Config]:
    """Threads, a one-process group, and the config with tinyshakespeare's vocabulary."""
    torch.set_num_threads(args.threads)
    topo = init_distributed()
    return topo, load_config(args.config, [f"model.vocab_size={VOCAB}", *args.overrides])


def main() -> None:
    parser = timing_arguments(__doc__.split("\n")[0], steps=40, warmup=5)
    parser.add_argument("--profile", action="store_true", help="print the top operators")
    parser.add_argument("--engine", action="store_true",
                        help="the whole training step (engine, clipping, optimizer)")
    args = parser.parse_intermixed_args()  # key=value overrides before or after options
    topo, config = timing_setup(args)
    m, t = config.model, config.train
    seq, batch = config.data.seq_length, t.micro_batch_size or t.global_batch_size
    torch.manual_seed(0)
    ref = ReferenceGPT(VOCAB, m.num_layers, m.hidden_size, m.num_heads, m.ffn_size,
                       m.max_seq_length, padded_vocab=m.padded_vocab_size)
    rows = torch.randint(0, VOCAB, (batch, seq + 1))
    tokens, labels = rows[:, :-1], rows[:, 1:]

    if args.engine:
        config.train.global_batch_size, config.train.micro_batch_size = batch, batch
        _, _, stepper = build_engine(config, topo, deepspeed_config(config, 1))
        reference_opt = reference_optimizer(ref, t)
        micro_batches = [rows.numpy()]

        def modtrain_step() -> None:
            stepper.train(micro_batches, stop_requested=False)

        def reference_step() -> None:
            ref(tokens, labels).backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(ref.parameters(), t.grad_clip)
            reference_opt.step()
            reference_opt.zero_grad(set_to_none=True)
    else:
        model = GPT(m)

        def modtrain_step() -> None:
            model(tokens, labels).loss.backward()

        def reference_step() -> None:
            ref(tokens, labels).backward()

    for _ in range(args.warmup):
        modtrain_step()
        reference_step()
    times: dict[str, list[float]] = {"modtrain": [], "reference": []}
    for _ in range(args.steps):  # alternate, so both see the same machine load
        for name, step in (("modtrain", modtrain_step), ("reference", reference_step)):
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    ops_mod, events_mod = _aten_ops(modtrain_step)
    ops_ref, events_ref = _aten_ops(reference_step)
    mod_ms = 1e3 * statistics.median(times["modtrain"])
    ref_ms = 1e3 * statistics.median(times["reference"])
    print(f"shape: {m.num_layers} layers, width {m.hidden_size}, {m.num_heads} heads, "
          f"context {seq}, batch {batch}; {args.threads} thread(s), median of {args.steps}")
    what = (f"whole step (ZeRO stage {t.zero_stage}, clip {t.grad_clip})" if args.engine
            else "forward+backward")
    print(f"| model | {what} ms | aten ops per step |\n|---|---|---|")
    print(f"| modtrain GPT | {mod_ms:.1f} | {ops_mod:,} |")
    print(f"| reference GPT | {ref_ms:.1f} | {ops_ref:,} |")
    print(f"reference / modtrain time: {ref_ms / mod_ms:.2f}x")
    if args.profile:
        for name, events in (("modtrain", events_mod), ("reference", events_ref)):
            print(f"\n{name}:\n" + events.table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
