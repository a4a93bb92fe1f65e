"""The run directory before training: writable, and never another run's unless resumed or
moved aside (--overwrite); checked on every rank before DeepSpeed starts."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from modtrain.errors import ModtrainError
from modtrain.run_dir import CHECKPOINTS, METRICS_FILE, complete_tags


def previous_run(run_dir: Path) -> str | None:
    """What an earlier run left in `run_dir` (a complete checkpoint or logged metrics), or
    None when the directory is new, empty, or holds only files a run writes at start."""
    tags = complete_tags(run_dir / CHECKPOINTS) if run_dir.is_dir() else []
    if tags:
        return f"checkpoint {tags[-1]}"
    metrics = run_dir / METRICS_FILE
    if metrics.is_file() and metrics.stat().st_size > 0:
        return f"a non-empty {METRICS_FILE}"
    return None


def check_run_dir(run_dir: Path, resume: str, overwrite: bool) -> None:
    """Raise ModtrainError unless training may write into `run_dir` (created if missing)."""
    if overwrite and resume == "auto":
        raise ModtrainError("--overwrite moves the run aside and --resume auto continues it; "
                            "pass only one of them")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir, prefix=".write-test-"):
            pass
    except OSError as e:
        raise ModtrainError(
            f"run.dir={run_dir} is not a writable directory ({e.strerror or e}); "
            "set run.dir to a directory you can write"
        ) from None
    found = previous_run(run_dir)
    if found and resume != "auto" and not overwrite:
        raise ModtrainError(
            f"run.dir={run_dir} already holds a run ({found}); continue it with --resume auto, "
            "train into a new run.dir=..., or pass --overwrite to move it aside to "
            f"{run_dir}.old-<time>"
        )


def move_aside(run_dir: Path) -> Path:
    """Rename an earlier run to RUN_DIR.old-<time> (never deleted); returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 1
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
        n += 1
    run_dir.rename(target)
    return target
