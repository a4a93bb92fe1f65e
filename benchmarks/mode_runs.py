"""Dense, MoD, MoE, staged MoDE and integrated MoDE on tinyshakespeare at equal training FLOPs.

    python benchmarks/mode_runs.py [--dense-steps 2000] [--json out.json]
    python benchmarks/mode_runs.py --quick          # a few steps each: checks the pipeline

Each variant is its shipped config (configs/shakespeare_*.yaml). Its FLOPs per trained token
come from modtrain/model/flops.py (routing, gates, expert buffers included, no-op experts
free), and its step count is chosen so that every run spends the dense run's training FLOPs
(dense steps x dense FLOPs per token / variant FLOPs per token; the learning-rate schedule
follows each run's own length). Runs are sequential in one invocation; the table gives the
final validation loss (train.eval_batches windows of the held-out tail) and the wall time.
Needs data/shakespeare_char.{model,zarr} (launch/quickstart.sh makes them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from modtrain.config import load_config
from modtrain.model.flops import training_flops_per_token
from modtrain.run_dir import METRICS_FILE, read_metrics

VARIANTS = ("dense", "mod", "moe", "mode_staged", "mode_integrated")


def flops_per_token(config: str, overrides: list[str]) -> float:
    c = load_config(config, overrides)
    if not c.model.vocab_size:  # as training does: the tokenizer's vocabulary
        import sentencepiece as spm

        c.model.vocab_size = spm.SentencePieceProcessor(model_file=c.data.tokenizer).vocab_size()
    return training_flops_per_token(c.model, c.data.seq_length)


def run(config: str, run_dir: Path, overrides: list[str]) -> dict:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "modtrain", "train", config, f"run.dir={run_dir}",
                    *overrides, "--overwrite"], check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    records = read_metrics(run_dir / METRICS_FILE)
    val = [r["val_loss"] for r in records if "val_loss" in r]
    train = [r for r in records if "loss" in r]
    return {"val_loss": val[-1], "train_loss": train[-1]["loss"], "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dense-steps", type=int, default=None,
                        help="steps of the dense run, the FLOPs budget (2000; --quick: 6)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--out", default="runs/mode_benchmark", help="parent of the run dirs")
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="few steps, tiny evaluation")
    parser.add_argument("overrides", nargs="*", help="key=value for every run")
    args = parser.parse_args()
    common = list(args.overrides)
    dense_steps = args.dense_steps or (6 if args.quick else 2000)
    if args.quick:
        common += ["train.eval_batches=2", "train.warmup_steps=2", "train.log_interval=2",
                   "run.tensorboard=false"]
    names = args.variants.split(",")
    dense = load_config("configs/shakespeare_dense.yaml", common)
    base = flops_per_token("configs/shakespeare_dense.yaml", common)
    tokens_per_step = dense.train.global_batch_size * dense.data.seq_length
    budget = dense_steps * base * tokens_per_step
    rows = []
    for name in names:
        config = f"configs/shakespeare_{name}.yaml"
        per_token = flops_per_token(config, common)
        steps = max(1, round(budget / (per_token * tokens_per_step)))
        # Evaluate at the end only, so every run's evaluation costs the same.
        overrides = [*common, f"train.steps={steps}", f"train.eval_interval={steps}",
                     f"train.save_interval={steps}"]
        result = run(config, Path(args.out) / name, overrides)
        rows.append({"variant": name, "flops_per_token": per_token, "steps": steps,
                     "training_flops": steps * per_token * tokens_per_step, **result})
        print(f"{name}: {steps} steps, val loss {result['val_loss']:.4f}, "
              f"{result['wall_s']:.0f} s", file=sys.stderr)
    print("| variant | MFLOPs/token | steps | training TFLOPs | val loss | train loss | wall s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['flops_per_token'] / 1e6:.2f} | {r['steps']} | "
              f"{r['training_flops'] / 1e12:.3f} | {r['val_loss']:.4f} | {r['train_loss']:.4f} "
              f"| {r['wall_s']:.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
