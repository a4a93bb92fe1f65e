"""The table (and JSON) of benchmarks/gpu_smoke.sh: per run the final loss, validation loss,
router BCE at the first and last record, median tokens/s, peak allocated device memory; and
whether the resumed run's losses equal the uninterrupted run's.

    python benchmarks/gpu_smoke_report.py OUT_DIR --resumed NAME --reference NAME
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from modtrain.run_dir import METRICS_FILE, read_metrics


def run_row(run_dir: Path) -> dict:
    records = list(read_metrics(run_dir / METRICS_FILE))
    steps = [r for r in records if "loss" in r]
    vals = [r["val_loss"] for r in records if "val_loss" in r]
    bce_keys = sorted(k for k in (steps[0] if steps else {}) if k.startswith("router_bce/"))

    def bce(record: dict) -> float | None:
        return statistics.fmean(record[k] for k in bce_keys) if bce_keys else None

    memory = [r["max_memory_gib"] for r in steps if r.get("max_memory_gib") is not None]
    return {"run": run_dir.name, "steps": steps[-1]["step"] if steps else 0,
            "loss": steps[-1]["loss"] if steps else None, "val_loss": vals[-1] if vals else None,
            "router_bce_first": bce(steps[0]) if steps else None,
            "router_bce_last": bce(steps[-1]) if steps else None,
            "skipped": sum(1 for r in steps if r.get("skipped")),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps[1:] or steps),
            "max_memory_gib": max(memory) if memory else None}


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir / METRICS_FILE) if "loss" in r}


def resume_check(resumed: Path, reference: Path) -> dict:
    """Loss for loss over the steps both logged; bitwise when the largest difference is 0."""
    a, b = losses(resumed), losses(reference)
    common = sorted(set(a) & set(b))
    diffs = [abs(a[s] - b[s]) for s in common]
    return {"steps": len(common), "max_abs_diff": max(diffs) if diffs else None,
            "bitwise": bool(diffs) and max(diffs) == 0.0}


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    lines = ["| run | steps | loss | val loss | router BCE first -> last | skipped | tok/s | "
             "peak GiB |", "|" + "---|" * 8]
    for r in rows:
        bce = ("-" if r["router_bce_first"] is None else
               f"{r['router_bce_first']:.3f} -> {r['router_bce_last']:.3f}")
        lines.append(f"| {r['run']} | {r['steps']} | {fmt(r['loss'], '.4f')} | "
                     f"{fmt(r['val_loss'], '.4f')} | {bce} | {r['skipped']} | "
                     f"{r['tokens_per_s']:,.0f} | {fmt(r['max_memory_gib'], '.2f')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--resumed", required=True)
    parser.add_argument("--reference", required=True)
    args = parser.parse_args()
    train = args.out / "train"
    rows = [run_row(d) for d in sorted(train.iterdir()) if (d / METRICS_FILE).is_file()]
    resume = resume_check(train / args.resumed, train / args.reference)
    print(table(rows))
    print(f"\nresume ({args.resumed} vs {args.reference}): {resume['steps']} steps compared, "
          f"largest loss difference {resume['max_abs_diff']}, "
          f"{'bitwise' if resume['bitwise'] else 'not bitwise'}")
    (args.out / "smoke.json").write_text(json.dumps({"rows": rows, "resume": resume},
                                                    indent=1))


if __name__ == "__main__":
    main()
