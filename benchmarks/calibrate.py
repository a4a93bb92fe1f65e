"""Measure achieved FLOP/s of real training steps on this machine: `modtrain plan --calibration`.

    python benchmarks/calibrate.py --out calibration.json [--config C] [--threads 1]
                                   [--steps 7] [--warmup 2] [key=value ...]

Builds the training engine `modtrain train` uses (`modtrain.train.engine.build_engine`:
DeepSpeed, its optimizer, the step runner) for the config in this one process, runs
--warmup steps and then --steps timed ones on a random batch of train.global_batch_size
rows (one micro-batch), and takes the median step time. Achieved FLOP/s = the analytic
training FLOPs of a step (`model/flops.py`, what `modtrain plan` counts) / that median.
The JSON written holds it with the shape it was measured on; `modtrain plan CONFIG --gpus N
--calibration calibration.json` then predicts step time from it instead of peak x MFU.
"""

from __future__ import annotations

import argparse
import json
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

from modtrain.config import Config, load_config  # noqa: E402
from modtrain.model.flops import training_flops_per_token  # noqa: E402
from modtrain.parallel import init_distributed  # noqa: E402
from modtrain.report.calibration import FORMAT  # noqa: E402
from modtrain.train.ds_config import deepspeed_config  # noqa: E402
from modtrain.train.engine import build_engine  # noqa: E402

VOCAB = 67  # tinyshakespeare's characters
DEFAULT_CONFIG = ROOT / "configs" / "shakespeare_dense.yaml"


def tiny_config(overrides: list[str], config: str | Path = DEFAULT_CONFIG) -> Config:
    """The config with tinyshakespeare's vocabulary, one micro-batch a step."""
    c = load_config(str(config), [f"model.vocab_size={VOCAB}", *overrides])
    c.train.micro_batch_size = c.train.global_batch_size
    return c


def measure_step_seconds(configs: list[Config], steps: int, warmup: int) -> list[float]:
    """Median seconds of `steps` training steps of each config after `warmup` (one process,
    the real engine). With several configs their steps alternate, so a slow phase of a
    shared machine hits them all alike."""
    topo = init_distributed()
    runs = []
    gen = torch.Generator().manual_seed(0)
    for config in configs:
        _, _, stepper = build_engine(config, topo, deepspeed_config(config, 1))
        rows = torch.randint(0, config.model.vocab_size,
                             (config.train.global_batch_size, config.data.seq_length + 1),
                             generator=gen).numpy()
        runs.append((stepper, rows))
    times: list[list[float]] = [[] for _ in configs]
    for i in range(warmup + steps):
        for (stepper, rows), kept in zip(runs, times):
            start = time.perf_counter()
            stepper.train([rows], stop_requested=False)
            if i >= warmup:
                kept.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def step_flops(config: Config) -> float:
    seq = config.data.seq_length
    return training_flops_per_token(config.model, seq) * seq * config.train.global_batch_size


def calibrate(config: Config, steps: int, warmup: int) -> dict:
    """The calibration record of one config, measured here."""
    return record(config, measure_step_seconds([config], steps, warmup)[0], steps, warmup)


def record(config: Config, seconds: float, steps: int, warmup: int) -> dict:
    """The calibration record of `config` measured at `seconds` a step."""
    m = config.model
    return {"format": FORMAT, "achieved_flops_per_s": step_flops(config) / seconds,
            "step_s": seconds, "device": "cpu" if not torch.cuda.is_available() else "cuda",
            "threads": torch.get_num_threads(), "steps": steps, "warmup": warmup,
            "shape": {"num_layers": m.num_layers, "hidden_size": m.hidden_size,
                      "num_heads": m.num_heads, "seq_length": config.data.seq_length,
                      "global_batch_size": config.train.global_batch_size,
                      "mod_capacity": m.mod.capacity if m.mod.enabled else None,
                      "precision": config.train.precision}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("overrides", nargs="*", help="config key=value, e.g. model.hidden_size=256")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--out", required=True, help="calibration JSON to write")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_intermixed_args()
    torch.set_num_threads(args.threads)
    record = calibrate(tiny_config(args.overrides, args.config), args.steps, args.warmup)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"{record['achieved_flops_per_s'] / 1e9:.2f} GFLOP/s achieved "
          f"(median step {record['step_s'] * 1e3:.1f} ms); wrote {args.out}")


if __name__ == "__main__":
    main()
