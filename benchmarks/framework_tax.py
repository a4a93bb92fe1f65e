"""The framework tax: `modtrain train` (dense) against a plain PyTorch GPT of the same recipe.

    python benchmarks/framework_tax.py [--quick] [--json OUT] [--repeats N]
        [--shapes shakespeare,wide] [--procs 1,2] [--compile off,on] [--zero 0,1]

For each case (shape x processes x train.compile x train.zero_stage) the reference
(benchmarks/reference_gpt.py; torch DDP over gloo for 2 processes) and the real command path
(`python -m modtrain train`, under torchrun for 2 processes) run alternately, back to back,
`--repeats` times, the order swapped every repeat. Each run's speed is the median tokens/s
of its logged windows after the warm-up windows (compilation, allocator warm-up); the table
gives the median over repeats and the median of the per-repeat ratios modtrain / reference.
Both variants get the same OMP_NUM_THREADS (cores / processes). The reference keeps the
whole AdamW state on every rank, as modtrain does with train.zero_stage=0; stage 1 adds
DeepSpeed's optimizer-state partitioning, and its bookkeeping, to the comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "shakespeare_dense.yaml"

# name -> (model/data/batch overrides, steps, log_interval, warm-up windows left out)
SHAPES: dict[str, tuple[list[str], int, int, int]] = {
    "shakespeare": ([], 120, 10, 2),  # 4 layers, width 128, context 64, batch 12
    "wide": (["model.hidden_size=512", "model.num_heads=8", "data.seq_length=256",
              "model.max_seq_length=256", "train.global_batch_size=8"], 24, 4, 1),
    "tiny": (["model.num_layers=2", "model.hidden_size=32", "model.num_heads=2",
              "data.seq_length=16", "model.max_seq_length=16", "train.global_batch_size=4"],
             4, 2, 1),
}
# The same for both: no evaluation or checkpoint inside the timed windows, warm-up short.
COMMON = ["train.eval_interval=1000000", "train.save_interval=1000000", "train.eval_batches=1",
          "train.warmup_steps=10", "run.tensorboard=false", "run.wandb=false"]


@dataclass
class Case:
    shape: str
    procs: int
    compile: bool
    zero_stage: int = 1  # modtrain's train.zero_stage (the reference has no ZeRO)
    data: tuple[str, ...] = ()  # data.store / data.tokenizer overrides

    @property
    def name(self) -> str:
        return (f"{self.shape} x{self.procs} compile={'on' if self.compile else 'off'} "
                f"zero={self.zero_stage}")

    def overrides(self) -> list[str]:
        extra, steps, log_interval, _ = SHAPES[self.shape]
        return [*extra, *COMMON, *self.data, f"train.steps={steps}",
                f"train.log_interval={log_interval}"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launcher(procs: int) -> list[str]:
    if procs == 1:
        return [sys.executable]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(procs),
            "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]


def _env(procs: int) -> dict[str, str]:
    threads = max(1, (os.cpu_count() or 1) // procs)
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MASTER_ADDR": "127.0.0.1",
            "PYTHONPATH": str(ROOT)}


def _speed(records: list[dict], warmup_windows: int) -> float:
    speeds = [r["tokens_per_s"] for r in records if r.get("tokens_per_s") and not r.get("skipped")]
    kept = speeds[warmup_windows:] or speeds[-1:]
    return statistics.median(kept)


def run_reference(case: Case, work: Path) -> float:
    out = work / "reference.json"
    cmd = [*_launcher(case.procs), str(ROOT / "benchmarks" / "reference_gpt.py"), str(CONFIG),
           *case.overrides(), "--json", str(out)] + (["--compile"] if case.compile else [])
    subprocess.run(cmd, check=True, env=_env(case.procs), cwd=ROOT, stdout=subprocess.DEVNULL)
    return _speed(json.loads(out.read_text())["records"], SHAPES[case.shape][3])


def run_modtrain(case: Case, work: Path) -> float:
    run_dir = work / "modtrain"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [*_launcher(case.procs), "-m", "modtrain", "train", str(CONFIG), *case.overrides(),
           f"run.dir={run_dir}", f"train.compile={str(case.compile).lower()}",
           f"train.zero_stage={case.zero_stage}"]
    subprocess.run(cmd, check=True, env=_env(case.procs), cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return _speed([json.loads(line) for line in lines], SHAPES[case.shape][3])


def measure(case: Case, repeats: int, work: Path) -> dict:
    ref, mod = [], []
    for i in range(repeats):  # alternate, so both see the same machine load; the order
        # swaps every repeat, so a slow phase of the machine does not always hit one side
        first_reference = i % 2 == 0
        if first_reference:
            ref.append(run_reference(case, work))
        mod.append(run_modtrain(case, work))
        if not first_reference:
            ref.append(run_reference(case, work))
        print(f"  {case.name}: reference {ref[-1]:,.0f}, modtrain {mod[-1]:,.0f} tokens/s",
              file=sys.stderr)
    return {"shape": case.shape, "procs": case.procs, "compile": case.compile,
            "zero_stage": case.zero_stage,
            "reference_tokens_per_s": ref, "modtrain_tokens_per_s": mod,
            "reference_median": statistics.median(ref), "modtrain_median": statistics.median(mod),
            "ratio": statistics.median(m / r for m, r in zip(mod, ref))}


def table(results: list[dict]) -> str:
    lines = ["| shape | processes | compile | modtrain ZeRO stage | reference tokens/s | "
             "modtrain tokens/s | modtrain / reference |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['shape']} | {r['procs']} | {'on' if r['compile'] else 'off'} | "
                     f"{r['zero_stage']} | "
                     f"{r['reference_median']:,.0f} | {r['modtrain_median']:,.0f} | "
                     f"{r['ratio']:.2f}x |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tiny model, one process, compile off, one repeat (a smoke test)")
    parser.add_argument("--shapes", default="shakespeare,wide")
    parser.add_argument("--procs", default="1,2")
    parser.add_argument("--compile", default="off,on")
    parser.add_argument("--zero", default="0,1", help="modtrain's train.zero_stage values")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--store", help="token store (default: the config's, shakespeare_char)")
    parser.add_argument("--tokenizer", help="its tokenizer (with --store)")
    args = parser.parse_args()
    if args.quick:
        args.shapes, args.procs, args.compile, args.zero, args.repeats = "tiny", "1", "off", "1", 1
    data = tuple(f"data.{key}={value}" for key, value in
                 (("store", args.store), ("tokenizer", args.tokenizer)) if value)
    cases = [Case(shape, int(procs), flag == "on", int(zero), data)
             for shape in args.shapes.split(",") for procs in args.procs.split(",")
             for flag in args.compile.split(",") for zero in args.zero.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="framework_tax_") as tmp:
        for case in cases:
            results.append(measure(case, args.repeats, Path(tmp)))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"cores": os.cpu_count(), "results": results},
                                              indent=1))


if __name__ == "__main__":
    main()
