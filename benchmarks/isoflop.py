"""Dense baseline vs Mixture-of-Depths variants at equal training FLOPs (the MoD paper's
isoFLOP claim), trained through `modtrain train`, compared against FLOPs and wall time.

    python benchmarks/isoflop.py --plan                 # sizes, FLOPs/token, matched steps
    python benchmarks/isoflop.py --json isoflop.json --img-dir docs/img
    python benchmarks/isoflop.py --quick --corpora shakespeare   # a few steps, end to end

The budget of each corpus is the dense baseline's steps x its training FLOPs per step; every
variant gets the number of steps that spends the same budget (same batch and sequence
length, so a variant with fewer FLOPs per token sees more tokens). FLOPs are counted
analytically by modtrain.model.flops.training_flops_per_token (forward + backward, router and
predictor included). Runs are sequential in one invocation, each with the same torch thread
count (OMP_NUM_THREADS); wall time is the process's, and training time the sum of the logged
windows (tokens / tokens-per-second), which leaves out start-up, evaluation and saving.
Writes OUT/isoflop.md (the table), OUT/isoflop_<corpus>_{flops,time}.png (`modtrain plot`'s
figure) and, with --json, the results; --img-dir copies the PNGs there.
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
from dataclasses import asdict, dataclass
from pathlib import Path

from modtrain.config import load_config
from modtrain.config.schema import Config
from modtrain.data.read.store import TokenStore
from modtrain.model.flops import training_flops_per_token
from modtrain.model.param_table import parameter_count
from modtrain.report.curves import plot_runs, read_run, x_value
from modtrain.run_dir import read_metrics

# Base configs: data, batch, optimiser; a variant only changes the model.
CORPORA = {
    "shakespeare": "benchmarks/configs/isoflop_shakespeare.yaml",
    "local": "benchmarks/configs/isoflop_local.yaml",
}
# Dense steps that set each corpus's FLOPs budget (full runs / --quick): sized so the eight
# runs take under an hour on 2 shared CPU cores.
DENSE_STEPS = {"shakespeare": 600, "local": 400}
QUICK_DENSE_STEPS = 6
EVALS_PER_RUN = 8  # validation points along each curve (and one at the end)

# MoD at the paper's best setting (capacity 12.5%, every other block routed), at the
# baseline's size and at two larger sizes whose FLOPs per token are close to the baseline's;
# and a smaller dense control with about mod_same's FLOPs per token (so also more tokens).
MOD = ["model.mod.enabled=true", "model.mod.capacity=0.125", "model.mod.routed_layers=null"]
VARIANTS = {
    "dense": ["model.mod.enabled=false"],
    "dense_small": ["model.mod.enabled=false", "model.num_layers=2"],  # 2 x 128
    "mod_same": MOD,  # 4 x 128: fewer FLOPs per token, so more steps in the budget
    "mod_deep": MOD + ["model.num_layers=8"],  # 8 x 128: 4 dense + 4 routed blocks
    "mod_wide": MOD + ["model.hidden_size=192", "model.num_heads=6"],  # 4 x 192
}


@dataclass
class Plan:
    corpus: str
    variant: str
    overrides: list[str]
    params: int
    flops_per_token: float
    tokens_per_step: int
    steps: int

    @property
    def total_flops(self) -> float:
        return self.flops_per_token * self.tokens_per_step * self.steps


def resolved(base: str, overrides: list[str]) -> Config:
    """The config a run will use, vocabulary size taken from the store as training does."""
    config = load_config(base, overrides)
    if not config.model.vocab_size:
        config.model.vocab_size = TokenStore(config.data.store).vocab_size
    return config


def schedule(steps: int, quick: bool) -> list[str]:
    """Warm-up, evaluation, logging and saving scaled to a run's own length."""
    evals = max(1, steps // EVALS_PER_RUN)
    overrides = [f"train.steps={steps}", f"train.warmup_steps={max(1, steps // 10)}",
                 f"train.eval_interval={evals}", f"train.save_interval={steps}",
                 f"train.log_interval={1 if quick else 10}"]
    return overrides + (["train.eval_batches=2"] if quick else [])


def plan_corpus(corpus: str, variants: list[str], extra: list[str], dense_steps: int,
                quick: bool) -> list[Plan]:
    base = CORPORA[corpus]
    sized = {}
    for name in ["dense"] + [v for v in variants if v != "dense"]:
        config = resolved(base, VARIANTS[name] + extra)
        tokens = config.data.seq_length * config.train.global_batch_size
        sized[name] = (config, tokens,
                       training_flops_per_token(config.model, config.data.seq_length))
    _, dense_tokens, dense_fpt = sized["dense"]
    budget = dense_fpt * dense_tokens * dense_steps
    plans = []
    for name in variants:
        config, tokens, fpt = sized[name]
        steps = max(1, round(budget / (fpt * tokens)))
        plans.append(Plan(corpus, name, VARIANTS[name] + extra + schedule(steps, quick),
                          parameter_count(config.model), fpt, tokens, steps))
    return plans


def train(plan: Plan, run_dir: Path, threads: int) -> float:
    """Train one variant through `modtrain train`; returns the process's wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               MASTER_ADDR=os.environ.get("MASTER_ADDR", "127.0.0.1"))
    command = [sys.executable, "-m", "modtrain", "train", CORPORA[plan.corpus],
               *plan.overrides, f"run.dir={run_dir}", "run.tensorboard=false", "--overwrite"]
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(run_dir.parent / f"{plan.variant}.log", "w") as log:  # beside, not in, run.dir
        done = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    if done.returncode:
        sys.exit(f"modtrain train failed for {plan.corpus}/{plan.variant}; see {log.name}")
    wall = time.perf_counter() - start
    wall_file(run_dir).write_text(f"{wall:.3f}\n")  # kept for --report
    return wall


def wall_file(run_dir: Path) -> Path:
    return run_dir.parent / f"{run_dir.name}.wall_s"


def val_at_time(run_dir: Path, seconds: float) -> float | None:
    """Validation loss at `seconds` of training time (linear between evaluations); the final
    one when the run finished sooner; None before the first evaluation."""
    curves = read_run(run_dir)
    points = [(x_value(curves, s, "time"), v) for s, v in curves.val]
    if not points or seconds < points[0][0]:
        return None
    for (t0, v0), (t1, v1) in zip(points, points[1:]):
        if t0 <= seconds <= t1:
            return v0 + (v1 - v0) * (seconds - t0) / (t1 - t0) if t1 > t0 else v1
    return points[-1][1]


def measure(plan: Plan, run_dir: Path, wall: float) -> dict:
    curves = read_run(run_dir)
    speeds = [r["tokens_per_s"] for r in read_metrics(run_dir / "metrics.jsonl")
              if r.get("tokens_per_s")]
    # Median over windows, the first (start-up) left out: robust to other jobs' bursts.
    speed = statistics.median(speeds[1:] or speeds) if speeds else None
    tokens = plan.steps * plan.tokens_per_step
    return {**asdict(plan), "total_flops": plan.total_flops, "tokens": tokens,
            "val_loss": curves.val[-1][1] if curves.val else None,
            "train_loss": curves.train[-1][1] if curves.train else None,
            "train_s": max(curves.seconds_at.values(), default=0.0), "wall_s": wall,
            "tokens_per_s_median": speed, "train_s_at_median": tokens / speed if speed else None}


def table(rows: list[dict]) -> str:
    lines = ["| corpus | config | params | FLOPs/token | steps | tokens | total FLOPs | "
             "final val loss | val loss at dense's time | train s | train s at median speed | "
             "wall s | tokens/s (median) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    def num(r: dict, key: str, fmt: str) -> str:
        return format(r[key], fmt) if r.get(key) is not None else "-"

    for r in rows:
        lines.append(
            f"| {r['corpus']} | {r['variant']} | {r['params']:,} | {r['flops_per_token']:.3e} "
            f"| {r['steps']} | {r['steps'] * r['tokens_per_step']:,} | {r['total_flops']:.3e} "
            f"| {num(r, 'val_loss', '.4f')} | {num(r, 'val_at_dense_time', '.4f')} "
            f"| {num(r, 'train_s', '.0f')} | {num(r, 'train_s_at_median', '.0f')} "
            f"| {num(r, 'wall_s', '.0f')} "
            f"| {num(r, 'tokens_per_s_median', ',.0f')} |")
    return "\n".join(lines)


def run_corpus(plans: list[Plan], out: Path, threads: int, report_only: bool) -> list[dict]:
    rows = []
    for plan in plans:
        run_dir = out / plan.corpus / plan.variant
        if report_only:
            wall = float(wall_file(run_dir).read_text()) if wall_file(run_dir).is_file() else None
        else:
            print(f"training {plan.corpus}/{plan.variant}: {plan.steps} steps", flush=True)
            wall = train(plan, run_dir, threads)
        rows.append(measure(plan, run_dir, wall))
    dense = next((r for r in rows if r["variant"] == "dense"), None)
    for r in rows:
        if dense is not None:
            r["val_at_dense_time"] = val_at_time(out / r["corpus"] / r["variant"], dense["train_s"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plan", action="store_true", help="print the plan only, train nothing")
    parser.add_argument("--report", action="store_true",
                        help="train nothing: table, JSON and plots from the runs already in --out")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_DENSE_STEPS} dense steps per corpus (a smoke test)")
    parser.add_argument("--corpora", default=",".join(CORPORA), help="comma-separated")
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated (the dense baseline always sets the budget)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for every run, e.g. data.store=PATH")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each run")
    parser.add_argument("--out", default="runs/isoflop", help="run directories, table, plots")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--img-dir", help="also copy the PNGs here (e.g. docs/img)")
    args = parser.parse_args()
    out, variants = Path(args.out), args.variants.split(",")
    all_rows = []
    for corpus in args.corpora.split(","):
        steps = QUICK_DENSE_STEPS if args.quick else DENSE_STEPS[corpus]
        plans = plan_corpus(corpus, variants, args.set, steps, args.quick)
        if args.plan:
            all_rows += [{**asdict(p), "total_flops": p.total_flops} for p in plans]
            continue
        rows = run_corpus(plans, out, args.threads, args.report)
        all_rows += rows
        run_dirs = [out / corpus / v for v in variants]
        for axis in ("flops", "time"):
            png = plot_runs(run_dirs, out / f"isoflop_{corpus}_{axis}.png", axis)
            if args.img_dir:
                shutil.copy(png, Path(args.img_dir) / png.name)
    text = table(all_rows)
    print(text)
    if not args.plan:
        out.mkdir(parents=True, exist_ok=True)
        (out / "isoflop.md").write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "quick": args.quick,
                                               "rows": all_rows}, indent=1))


if __name__ == "__main__":
    main()
