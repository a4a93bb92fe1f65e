"""The run directory before training: writable, and never another run's unless resumed or
moved aside (--overwrite); checked on every rank before DeepSpeed starts. One training at a
time holds it (`hold_run_dir`)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

from modtrain import log
from modtrain import run_dir as run_dir_files
from modtrain.checkpoint.tags import complete_tags
from modtrain.errors import ModtrainError
from modtrain.run_dir import CHECKPOINTS, LOG_DIR, METRICS_FILE, TENSORBOARD_DIR

WRITTEN_DIRS = (CHECKPOINTS, TENSORBOARD_DIR, LOG_DIR)  # inside the run dir


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
    except OSError as e:
        raise ModtrainError(f"run.dir={run_dir} is not a writable directory "
                            f"({e.strerror or e}); set run.dir to a directory you can write"
                            ) from None
    # every directory a run writes into, found now rather than at the first save
    for path in (run_dir, *(run_dir / sub for sub in WRITTEN_DIRS if (run_dir / sub).exists())):
        try:
            with tempfile.TemporaryFile(dir=path, prefix=".write-test-"):
                pass
        except OSError as e:
            name = f"run.dir={path}" if path == run_dir else str(path)
            raise ModtrainError(
                f"{name} is not a writable directory ({e.strerror or e}); make it writable "
                "or set run.dir to a directory you can write"
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
    target = run_dir_files.move_aside(run_dir)
    if (target / LOCK_FILE).exists():  # the lock (its inode) stays with this run
        run_dir.mkdir()
        (target / LOCK_FILE).rename(run_dir / LOCK_FILE)
    return target


LOCK_FILE = ".modtrain.lock"  # in the run dir: "HOST PID" of the training that holds it


@contextlib.contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on `run_dir` for the whole run (rank 0 of a job takes it).

    A second training into the same directory stops with one line naming the holder. The
    kernel drops the lock of a process that dies; the host and pid a killed run left in the
    file (a clean end empties it) are taken over with a warning.
    """
    path = run_dir / LOCK_FILE
    with open(path, "a+") as handle:  # closing it releases the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().split() or ["?", "?"]
            raise ModtrainError(
                f"run.dir={run_dir} is in use by another training (host {holder[0]}, pid "
                f"{holder[-1]}); wait for it to end or stop it, or train into another run.dir"
            ) from None
        handle.seek(0)
        previous = handle.read().split()
        if len(previous) == 2:
            log.warning(f"took over {path} from pid {previous[1]} on host {previous[0]}, "
                        "which ended without releasing it", every_rank=True)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{socket.gethostname()} {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            handle.truncate(0)  # ended, even by an exception: nobody to name
