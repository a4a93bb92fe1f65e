"""MoD's training speed-up over dense, end to end through `modtrain train`, next to its FLOP limit.

    python benchmarks/mod_speedup.py [--seq 64 256 1024] [--capacity 1.0 0.5 0.25 0.125]
        [--routing alternate all] [--repeats 3] [--json results.json]
    python benchmarks/mod_speedup.py --quick --store S.zarr --tokenizer T.model   # seconds

Each cell (sequence length S, routed blocks, capacity) trains the dense config and the
same config with MoD, each through the real trainer in its own process, back to back,
--repeats times (the order swapped every repeat, so drift in the load of the machine hits
both alike). Every step is logged; a run's speed is the fastest (--statistic best; other
jobs on the cores only ever slow a step down) or the median of its metrics.jsonl tokens/s
records after the first --skip-records (start-up, first allocations). A cell's speed-up is
the median over repeats of MoD/dense of the same pair; each run keeps --tokens-per-step
(train.global_batch_size = tokens // S), so the work per step is alike at every S. The FLOP limit is
training_flops_per_token(dense) / training_flops_per_token(MoD) (modtrain/model/flops.py,
router and predictor included), computed from each run's saved config.yaml. Two fractions:
`of limit` = measured / limit (the target: >= 0.90) and `of gain` = (measured - 1) /
(limit - 1), the share of the possible saving realised (the stricter reading).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from modtrain.config import load_config
from modtrain.model.flops import training_flops_per_token
from modtrain.run_dir import CHECKPOINTS, CONFIG_FILE, METRICS_FILE, read_metrics

TARGET = 0.90  # the target for measured / limit, at every S >= 64
# Evaluation and checkpoints off the timed steps (the last step still evaluates one batch
# and saves once, after its record is written).
QUIET = ["train.eval_interval=1000000", "train.save_interval=1000000", "train.eval_batches=1",
         "run.tensorboard=false", "run.wandb=false"]
# A model small enough that --quick trains in seconds; the sweep uses the config's own.
TINY_MODEL = ["model.num_layers=2", "model.num_heads=2", "model.hidden_size=32"]


@dataclass
class Run:
    tokens_per_s: float  # --statistic of the steady-state records
    flops_per_token: float  # training_flops_per_token of the run's saved config
    records: int  # steady-state records the median is over
    wall_s: float  # the whole process, start-up and final save included


@dataclass
class Cell:
    seq_length: int
    routing: str  # "alternate" (every other block, the default) or "all"
    capacity: float
    limit: float  # FLOP-limit speed-up
    dense_tokens_per_s: float = 0.0  # medians over repeats
    mod_tokens_per_s: float = 0.0
    speedup: float = 0.0  # median over repeats of MoD/dense of back-to-back pairs
    pair_speedups: list[float] = field(default_factory=list)

    @property
    def of_limit(self) -> float:
        return self.speedup / self.limit

    @property
    def of_gain(self) -> float | None:
        """(measured - 1) / (limit - 1); None where the limit is within 2 % of 1."""
        return None if abs(self.limit - 1) < 0.02 else (self.speedup - 1) / (self.limit - 1)


def routed_layers(routing: str, num_layers: int) -> str:
    return "null" if routing == "alternate" else f"[{','.join(map(str, range(num_layers)))}]"


def train_once(config: str, overrides: list[str], run_dir: Path, skip_records: int,
               statistic: str, env: dict[str, str]) -> Run:
    """One `modtrain train` process; its steady-state tokens/s and FLOPs per token."""
    cmd = [sys.executable, "-m", "modtrain", "train", config, *overrides, f"run.dir={run_dir}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    speeds = [r["tokens_per_s"] for r in read_metrics(run_dir / METRICS_FILE)
              if "tokens_per_s" in r][skip_records:]
    if not speeds:
        sys.exit(f"{run_dir}: no tokens/s records after the first {skip_records}; raise --steps")
    saved = load_config(run_dir / CONFIG_FILE)  # vocab_size resolved from the store
    flops = training_flops_per_token(saved.model, saved.data.seq_length)
    shutil.rmtree(run_dir / CHECKPOINTS, ignore_errors=True)  # only the metrics are needed
    speed = max(speeds) if statistic == "best" else statistics.median(speeds)
    return Run(speed, flops, len(speeds), wall)


def measure_cell(args: argparse.Namespace, seq: int, routing: str, capacity: float,
                 env: dict[str, str]) -> Cell:
    common = [f"data.seq_length={seq}", f"model.max_seq_length={seq}",
              f"train.steps={args.steps}", f"train.log_interval={args.log_interval}",
              f"train.warmup_steps={min(args.steps - 1, 100)}",
              f"train.global_batch_size={max(1, args.tokens_per_step // seq)}",
              "train.micro_batch_size=0",
              f"data.index_cache={Path(args.out) / 'index'}", *QUIET, *args.model_overrides]
    if args.store:
        common += [f"data.store={args.store}", f"data.tokenizer={args.tokenizer}"]
    num_layers = load_config(args.config, common).model.num_layers
    variants = {
        "dense": common + ["model.mod.enabled=false"],
        "mod": common + ["model.mod.enabled=true", f"model.mod.capacity={capacity}",
                         f"model.mod.routed_layers={routed_layers(routing, num_layers)}"],
    }
    where = Path(args.out) / f"S{seq}" / routing / f"c{capacity}"
    runs: dict[str, list[Run]] = {"dense": [], "mod": []}
    for rep in range(args.repeats):
        order = ["dense", "mod"] if rep % 2 == 0 else ["mod", "dense"]
        for name in order:
            run_dir = where / f"r{rep}" / name
            shutil.rmtree(run_dir, ignore_errors=True)
            runs[name].append(train_once(args.config, variants[name], run_dir,
                                         args.skip_records, args.statistic, env))
        print(f"  S={seq} {routing} c={capacity} repeat {rep}: dense "
              f"{runs['dense'][-1].tokens_per_s:,.0f} tok/s, MoD "
              f"{runs['mod'][-1].tokens_per_s:,.0f} tok/s", file=sys.stderr, flush=True)
    pairs = [m.tokens_per_s / d.tokens_per_s for d, m in zip(runs["dense"], runs["mod"])]
    return Cell(seq, routing, capacity,
                limit=runs["dense"][0].flops_per_token / runs["mod"][0].flops_per_token,
                dense_tokens_per_s=statistics.median(r.tokens_per_s for r in runs["dense"]),
                mod_tokens_per_s=statistics.median(r.tokens_per_s for r in runs["mod"]),
                speedup=statistics.median(pairs), pair_speedups=pairs)


def cell_order(cell: Cell) -> tuple:
    return cell.seq_length, cell.routing != "alternate", -cell.capacity


def table(cells: list[Cell]) -> str:
    lines = ["| S | routed blocks | capacity | dense tok/s | MoD tok/s | speed-up | FLOP limit "
             "| of limit | of gain | >= 90 % of limit |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cells:
        gain = "n/a" if c.of_gain is None else f"{100 * c.of_gain:.0f} %"
        routed = "every other" if c.routing == "alternate" else "every"
        lines.append(f"| {c.seq_length} | {routed} | {c.capacity:g} | "
                     f"{c.dense_tokens_per_s:,.0f} | {c.mod_tokens_per_s:,.0f} | "
                     f"{c.speedup:.2f}x | {c.limit:.2f}x | {100 * c.of_limit:.0f} % | {gain} | "
                     f"{'yes' if c.of_limit >= TARGET else 'no'} |")
    return "\n".join(lines)


def write_json(path: str, args: argparse.Namespace, cells: list[Cell]) -> None:
    payload = {"command": " ".join(sys.argv), "threads": args.threads, "target": TARGET,
               "tokens_per_step": args.tokens_per_step, "steps": args.steps,
               "statistic": args.statistic,
               "cells": [{**asdict(c), "of_limit": c.of_limit, "of_gain": c.of_gain}
                         for c in cells]}
    Path(path).write_text(json.dumps(payload, indent=1) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/shakespeare_dense.yaml",
                   help="the dense config both variants start from")
    p.add_argument("--seq", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--capacity", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.125])
    p.add_argument("--routing", nargs="+", choices=["alternate", "all"],
                   default=["alternate", "all"],
                   help="routed blocks: every other (the default) or every block")
    p.add_argument("--repeats", type=int, default=3, help="dense/MoD pairs per cell")
    p.add_argument("--steps", type=int, default=25, help="train.steps of each run")
    p.add_argument("--log-interval", type=int, default=1, help="train.log_interval")
    p.add_argument("--skip-records", type=int, default=3,
                   help="leading tokens/s records left out (start-up, first allocations)")
    p.add_argument("--statistic", choices=["best", "median"], default="best",
                   help="a run's speed from its records: the fastest (other jobs only ever "
                        "slow a step down) or the median")
    p.add_argument("--tokens-per-step", type=int, default=768,
                   help="train.global_batch_size = this // S (at least 1): the same work per "
                        "step at every S (768: the config's 12 x 64)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of every run (1: no spinning OpenMP barriers when "
                        "other jobs share the cores)")
    p.add_argument("--store", help="data.store (default: the config's)")
    p.add_argument("--tokenizer", help="data.tokenizer, with --store")
    p.add_argument("--out", default="runs/mod_speedup", help="parent of the run directories")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--report", metavar="JSON", help="print the table of an earlier --json")
    p.add_argument("--quick", action="store_true",
                   help="a tiny model, S=32, capacity 0.25, every other block, one pair")
    args = p.parse_args(argv)
    args.model_overrides = []
    if args.quick:
        args.seq, args.capacity, args.routing = [32], [0.25], ["alternate"]
        args.repeats, args.steps, args.log_interval, args.skip_records = 1, 4, 1, 1
        args.statistic = "median"
        args.tokens_per_step, args.model_overrides = 128, TINY_MODEL
    if bool(args.store) != bool(args.tokenizer):
        p.error("--store and --tokenizer go together")
    if args.steps < (args.skip_records + 1) * args.log_interval:
        p.error("--steps leaves no record after --skip-records; raise --steps")
    return args


def summary(cells: list[Cell], threads: int) -> str:
    faster = [c for c in cells if c.limit > 1]  # capacity 1.0 adds the router: no gain to reach
    hits = sum(c.of_limit >= TARGET for c in faster)
    return (f"{hits}/{len(faster)} cells with a FLOP limit above 1 reach {TARGET:.0%} of it "
            f"(measured / limit); OMP_NUM_THREADS={threads}")


def load_cells(path: str) -> tuple[list[Cell], int]:
    """The cells of a --json file (a finished sweep, or what a stopped one had measured)."""
    payload = json.loads(Path(path).read_text())
    names = {f.name for f in fields(Cell)}
    return ([Cell(**{k: v for k, v in c.items() if k in names}) for c in payload["cells"]],
            payload["threads"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report:
        cells, threads = load_cells(args.report)
        print(table(sorted(cells, key=cell_order)) + "\n\n" + summary(cells, threads))
        return
    # The same threads for every run; the venv's tools first (one ninja for DeepSpeed's op).
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MASTER_ADDR": "127.0.0.1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(key, None)
    cells = []
    # Capacity outermost, in the order given: a sweep stopped early has measured the first
    # capacities at every S (its --json holds them; --report prints their table).
    for capacity in args.capacity:
        for seq in args.seq:
            for routing in args.routing:
                cells.append(measure_cell(args, seq, routing, capacity, env))
                if args.json:
                    write_json(args.json, args, cells)
    print(table(sorted(cells, key=cell_order)) + "\n\n" + summary(cells, args.threads))


if __name__ == "__main__":
    main()
