"""Where logged records go: one small class per output.

The training loop hands each record (a dict with `step` and numbers) to every sink; a new
output (another logger, a dashboard) is one class with `log` and `close`. metrics.jsonl is
always written; TensorBoard event files are written beside it when `tensorboard` is
installed (`pip install modtrain[tensorboard]`) and not turned off; a Weights & Biases run
in offline mode (RUN_DIR/wandb/, `wandb sync` uploads it later) when `run.wandb` is on.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol

from modtrain.errors import ModtrainError
from modtrain.run_dir import TENSORBOARD_DIR
from modtrain.train.metrics import MetricsWriter, Progress


class MetricSink(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


def finite_or_none(record: dict[str, Any]) -> dict[str, Any]:
    """JSON has no NaN: non-finite numbers are logged as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in record.items()}


class JsonlSink:
    """metrics.jsonl: one JSON object per record (see MetricsWriter for kill safety)."""

    def __init__(self, path: str | Path, resumed_step: int | None = None) -> None:
        self.writer = MetricsWriter(path, resumed_step=resumed_step)

    def log(self, record: dict[str, Any]) -> None:
        self.writer.write(finite_or_none(record))

    def close(self) -> None:
        self.writer.close()


class TensorBoardSink:
    """Event files in RUN_DIR/tensorboard/: every number of a record as a scalar at its step
    (`loss`, `val_loss`, `lr`, `routed_frac/layer1`, ... grouped by their prefix)."""

    def __init__(self, log_dir: str | Path, purge_step: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step drops events past a resumed checkpoint, as metrics.jsonl drops records.
        self.writer = SummaryWriter(str(log_dir), purge_step=purge_step)

    def log(self, record: dict[str, Any]) -> None:
        step = int(record["step"])
        for key, value in record.items():
            if key == "step" or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            if math.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class ProgressSink:
    """The compact line per logged step: step, loss, lr, tokens/s, routed fraction (mean
    over routed layers), MFU when known, time left; validation losses as their own line."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def log(self, record: dict[str, Any]) -> None:
        step = record["step"]
        if "val_loss" in record:
            sources = ", ".join(f"{k.removeprefix('val_loss/')} {v:.4f}"
                                for k, v in record.items() if k.startswith("val_loss/"))
            self.progress.message(f"step {step}: val loss {record['val_loss']:.4f}"
                                  + (f" ({sources})" if sources else ""))
            return
        extra = []
        routed = [v for k, v in record.items() if k.startswith("routed_frac/")]
        if routed:
            extra.append(f"routed {sum(routed) / len(routed):.3f}")
        if "mfu" in record:
            extra.append(f"MFU {100 * record['mfu']:.1f}%")
        self.progress.update(step, record["loss"], record["lr"], record["tokens_per_s"],
                             " | ".join(extra))

    def close(self) -> None:
        self.progress.close()


class WandbSink:
    """A Weights & Biases run in offline mode under RUN_DIR/wandb: nothing leaves the machine
    until `wandb sync RUN_DIR/wandb/offline-run-*` (compute nodes often have no internet)."""

    def __init__(self, run_dir: Path, project: str, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise ModtrainError("run.wandb=true needs the wandb package: pip install "
                                "modtrain[wandb], or set run.wandb=false") from None
        self.run = wandb.init(mode="offline", dir=str(run_dir), project=project,
                              name=run_dir.name, config=config, reinit="create_new")

    def log(self, record: dict[str, Any]) -> None:
        values = {k: v for k, v in record.items() if k != "step" and not isinstance(v, bool)
                  and isinstance(v, int | float) and math.isfinite(v)}
        self.run.log(values, step=int(record["step"]))

    def close(self) -> None:
        self.run.finish()


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def build_sinks(run_dir: str | Path, metrics_file: str, tensorboard: bool = True,
                resumed_step: int | None = None, progress: Progress | None = None,
                wandb_project: str | None = None, config: dict[str, Any] | None = None
                ) -> list[MetricSink]:
    """The sinks of the main rank: metrics.jsonl, the progress line when given, TensorBoard
    when wanted and installed, and W&B (offline) when given a project."""
    run_dir = Path(run_dir)
    sinks: list[MetricSink] = [JsonlSink(run_dir / metrics_file, resumed_step)]
    if progress is not None:
        sinks.append(ProgressSink(progress))
    if tensorboard and tensorboard_available():
        purge = None if resumed_step is None else resumed_step + 1
        sinks.append(TensorBoardSink(run_dir / TENSORBOARD_DIR, purge_step=purge))
    if wandb_project:
        sinks.append(WandbSink(run_dir, wandb_project, config or {}))
    return sinks
