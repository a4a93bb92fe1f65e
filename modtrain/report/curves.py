"""`modtrain plot`: training and validation loss of several runs in one PNG.

Reads each run's metrics.jsonl (whole lines only: a line a kill cut short is skipped) and
config.yaml. The x axis is the step, tokens seen, training FLOPs (analytic, forward +
backward, routing included) or training time (summed from each logged window's tokens/s;
start-up, evaluation and saving left out).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modtrain.config import load_config
from modtrain.errors import ModtrainError
from modtrain.model.flops import model_flops
from modtrain.report import figures
from modtrain.run_dir import CONFIG_FILE, METRICS_FILE, read_metrics

X_AXES = ("step", "tokens", "flops", "time")
_X_LABELS = {"step": "step", "tokens": "tokens", "flops": "training FLOPs",
             "time": "training time (s)"}


@dataclass
class RunCurves:
    name: str
    train: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    val: list[tuple[int, float]] = field(default_factory=list)  # (step, val_loss)
    seconds_at: dict[int, float] = field(default_factory=dict)  # step -> wall seconds
    tokens_per_step: int = 0
    flops_per_step: float = 0.0


def read_run(run_dir: str | Path) -> RunCurves:
    run_dir = Path(run_dir)
    metrics, config_file = run_dir / METRICS_FILE, run_dir / CONFIG_FILE
    if not metrics.is_file() or not config_file.is_file():
        raise ModtrainError(f"{run_dir} is not a run directory (no {METRICS_FILE} or "
                            f"{CONFIG_FILE}); pass the run.dir a training wrote")
    config = load_config(config_file)
    seq, batch = config.data.seq_length, config.train.global_batch_size
    curves = RunCurves(name=run_dir.name, tokens_per_step=seq * batch,
                       flops_per_step=3 * model_flops(config.model, seq) * batch)
    last_step, seconds = 0, 0.0
    for record in read_metrics(metrics):
        try:
            step = int(record["step"])
            loss, val = (None if record.get(k) is None else float(record[k])
                         for k in ("loss", "val_loss"))
            rate = float(record.get("tokens_per_s") or 0)
        except (TypeError, ValueError):  # a damaged record: skipped, as a cut line is
            continue
        if loss is not None:
            curves.train.append((step, loss))
            if rate:
                seconds += (step - last_step) * curves.tokens_per_step / rate
            last_step = step
            curves.seconds_at[step] = seconds
        if val is not None:
            curves.val.append((step, val))
    if not curves.train and not curves.val:
        raise ModtrainError(f"{metrics} holds no loss records yet; plot after the first "
                            "logged step")
    return curves


def x_value(curves: RunCurves, step: int, axis: str) -> float:
    if axis == "tokens":
        return step * curves.tokens_per_step
    if axis == "flops":
        return step * curves.flops_per_step
    if axis == "time":
        known = [s for s in curves.seconds_at if s <= step]
        return curves.seconds_at[max(known)] if known else 0.0
    return step


def plot_runs(run_dirs: list[str | Path], out: str | Path, x: str = "step") -> Path:
    """Loss (solid) and validation loss (dashed, dots) of each run against `x`."""
    if x not in X_AXES:
        raise ModtrainError(f"--x {x} is unknown; use one of {', '.join(X_AXES)}")
    runs = [read_run(d) for d in run_dirs]
    plt = figures.pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        if run.train:
            ax.plot([x_value(run, s, x) for s, _ in run.train], [v for _, v in run.train],
                    color=color, lw=1.2, alpha=0.8, label=f"{run.name} train")
        if run.val:
            ax.plot([x_value(run, s, x) for s, _ in run.val], [v for _, v in run.val],
                    color=color, ls="--", marker="o", ms=3, label=f"{run.name} val")
    ax.set_xlabel(_X_LABELS[x])
    ax.set_ylabel("loss (nats/token)")
    if x == "flops":
        ax.set_xscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return figures.save(fig, out)
