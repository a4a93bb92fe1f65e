"""The summary table (and JSON) of benchmarks/gpu.sh: training tokens/s, TFLOP/s and MFU per
run, decode tokens/s per export.

    python benchmarks/gpu_report.py OUT_DIR [--skip-records 1]

Reads OUT_DIR/train/NAME/{config.yaml,metrics.jsonl} (NAME = SIZE-dense or SIZE-mod) and
OUT_DIR/decode.json; writes OUT_DIR/summary.json. A run's numbers are medians over its
metrics.jsonl records after the first --skip-records (start-up and first-step allocation).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from modtrain.config import load_config
from modtrain.model.param_table import parameter_count
from modtrain.run_dir import CONFIG_FILE, METRICS_FILE, read_metrics


def train_row(run_dir: Path, skip_records: int) -> dict:
    config = load_config(run_dir / CONFIG_FILE)
    records = [r for r in read_metrics(run_dir / METRICS_FILE) if "tokens_per_s" in r]
    steady = records[skip_records:] or records[-1:]
    if not steady:
        raise SystemExit(f"{run_dir / METRICS_FILE} has no training records")

    def median(key: str) -> float | None:
        values = [r[key] for r in steady if r.get(key) is not None]
        return statistics.median(values) if values else None

    m = config.model
    return {"run": run_dir.name, "params": parameter_count(m), "layers": m.num_layers,
            "hidden": m.hidden_size, "seq_length": config.data.seq_length,
            "batch": config.train.global_batch_size, "precision": config.train.precision,
            "mod_capacity": m.mod.capacity if m.mod.enabled else None,
            "tokens_per_s": median("tokens_per_s"), "tflops_per_device":
            median("tflops_per_device"), "mfu": median("mfu"),
            "flops_per_token": steady[-1]["flops_per_token"], "records": len(steady)}


def decode_speeds(path: Path) -> dict[tuple[str, int], float]:
    """(export name, batch) -> tokens/s."""
    if not path.is_file():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {(Path(r["export"]).name, r["batch"]): r["tokens_per_s"] for r in rows}


def table(rows: list[dict], batches: list[int]) -> str:
    head = ("| run | params | layers x width | S x batch | train tok/s | TFLOP/s | MFU | "
            + " | ".join(f"decode tok/s b={b}" for b in batches) + " |")
    lines = [head, "|" + "---|" * (7 + len(batches))]
    for r in rows:
        mfu = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f} %"
        decode = " | ".join("-" if r["decode"].get(str(b)) is None
                            else f"{r['decode'][str(b)]:,.0f}" for b in batches)
        lines.append(f"| {r['run']} | {r['params'] / 1e6:.3g}M | {r['layers']} x {r['hidden']} "
                     f"| {r['seq_length']} x {r['batch']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['tflops_per_device']:.3g} | {mfu} | {decode} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path, help="benchmarks/gpu.sh's output directory")
    p.add_argument("--skip-records", type=int, default=1)
    args = p.parse_args()
    decode = decode_speeds(args.out / "decode.json")
    batches = sorted({b for _, b in decode})
    rows = []
    for run_dir in sorted((args.out / "train").iterdir()):
        row = train_row(run_dir, args.skip_records)
        row["decode"] = {str(b): decode.get((run_dir.name, b)) for b in batches}
        rows.append(row)
    print(table(rows, batches))
    (args.out / "summary.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
