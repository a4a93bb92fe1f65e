"""metrics.jsonl (one JSON object per logged step) and the one-line progress display."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any


class MetricsWriter:
    """Appends one JSON line per record, each in a single write, so a killed run keeps
    every whole line it logged; a partial last line left by a kill is dropped on reopen.

    `resumed_step`: records past it were logged by a run that was killed after its last
    checkpoint; they are dropped on open (the file is rewritten atomically), so a resumed
    run's curve holds each step once."""

    def __init__(self, path: str | Path, enabled: bool = True,
                 resumed_step: int | None = None) -> None:
        self._fd: int | None = None
        if enabled:
            _drop_partial_last_line(Path(path))
            if resumed_step is not None:
                _drop_records_after(Path(path), resumed_step)
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @property
    def enabled(self) -> bool:
        return self._fd is not None

    def write(self, record: dict[str, Any]) -> None:
        if self._fd is not None:
            os.write(self._fd, (json.dumps(record, sort_keys=False) + "\n").encode())

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _drop_partial_last_line(path: Path) -> None:
    if not path.is_file() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) != b"\n":  # only then read the file to find the last whole line
            f.seek(0)
            f.truncate(f.read().rfind(b"\n") + 1)


def _drop_records_after(path: Path, step: int) -> None:
    if not path.is_file():
        return
    lines = path.read_bytes().splitlines(keepends=True)
    kept = [line for line in lines if _step_of(line) <= step]
    if len(kept) == len(lines):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.writelines(kept)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _step_of(line: bytes) -> float:
    """A record's step; a line that is not a record with a step sorts after every step."""
    try:
        step = json.loads(line).get("step")
    except (ValueError, AttributeError):
        return float("inf")
    return step if isinstance(step, int) else float("inf")


class Progress:
    """A live status line on a terminal; plain lines at each log step otherwise."""

    def __init__(self, total_steps: int, enabled: bool = True) -> None:
        self.total = total_steps
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self.start_step: int | None = None

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float,
               extra: str = "") -> None:
        """The status line; `extra` (e.g. routed fraction, MFU) goes before the ETA."""
        if not self.enabled:
            return
        if self.start_step is None:
            self.start_step = step - 1
        done = step - self.start_step
        elapsed = time.monotonic() - self.start
        eta = elapsed / max(done, 1) * (self.total - step)
        line = (
            f"step {step}/{self.total} | loss {loss:.4f} | lr {lr:.2e} | "
            f"{tokens_per_s:,.0f} tok/s | {extra + ' | ' if extra else ''}"
            f"eta {int(eta // 60)}m{int(eta % 60):02d}s"
        )
        if self.tty:
            sys.stderr.write("\r\033[K" + line)
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self.tty:
            sys.stderr.write("\r\033[K")
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            sys.stderr.write("\n")
