"""Train the shakespeare dense and MoD configs back to back and print a comparison table.

    python benchmarks/shakespeare_runs.py [--steps N]

Needs data/shakespeare_char.{model,zarr} (launch/quickstart.sh makes them). Runs are
sequential in one invocation so their speed ratio is measured under the same conditions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

NANOGPT_VAL_LOSS = 1.88  # nanoGPT's CPU recipe for shakespeare_char (same dimensions)


def run(config: str, run_dir: Path, steps: int | None) -> dict:
    overrides = [f"run.dir={run_dir}"] + ([f"train.steps={steps}"] if steps else [])
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "modtrain", "train", config, *overrides], check=True,
                   stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "tokens_per_s" in r]
    val = [r["val_loss"] for r in records if "val_loss" in r]
    # The median over logged windows (the first, start-up, left out) is robust to other
    # jobs briefly taking the cores.
    speeds = [r["tokens_per_s"] for r in train[1:]] or [train[0]["tokens_per_s"]]
    return {"val_loss": val[-1], "train_loss": train[-1]["loss"],
            "tokens_per_s": statistics.median(speeds), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=None, help="override train.steps")
    parser.add_argument("--out", default="runs/benchmark", help="parent of the run dirs")
    args = parser.parse_args()
    results = {}
    for name in ("dense", "mod"):
        results[name] = run(f"configs/shakespeare_{name}.yaml", Path(args.out) / name, args.steps)
    print("| config | val loss | train loss | tokens/s (median) | wall s |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| shakespeare_{name} | {r['val_loss']:.4f} | {r['train_loss']:.4f} | "
              f"{r['tokens_per_s']:,.0f} | {r['wall_s']:.0f} |")
    print(f"| nanoGPT (reference) | {NANOGPT_VAL_LOSS} | | | |")
    ratio = results["mod"]["tokens_per_s"] / results["dense"]["tokens_per_s"]
    print(f"\nMoD / dense training throughput: {ratio:.2f}x")


if __name__ == "__main__":
    main()
