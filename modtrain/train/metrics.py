"""metrics.jsonl (one JSON object per logged step) and the one-line progress display."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any


class MetricsWriter:
    """Appends one JSON line per record and flushes, so a killed run keeps what it logged."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.enabled = enabled
        self._file = open(path, "a", encoding="utf-8") if enabled else None  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, sort_keys=False) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class Progress:
    """A live status line on a terminal; plain lines at each log step otherwise."""

    def __init__(self, total_steps: int, enabled: bool = True) -> None:
        self.total = total_steps
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self.start_step: int | None = None

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if not self.enabled:
            return
        if self.start_step is None:
            self.start_step = step - 1
        done = step - self.start_step
        elapsed = time.monotonic() - self.start
        eta = elapsed / max(done, 1) * (self.total - step)
        line = (
            f"step {step}/{self.total} | loss {loss:.4f} | lr {lr:.2e} | "
            f"{tokens_per_s:,.0f} tok/s | eta {int(eta // 60)}m{int(eta % 60):02d}s"
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
