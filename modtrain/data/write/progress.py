"""Progress of `data prepare`: per-worker counter files and one display with tokens/s.

Workers (processes or MPI ranks, possibly on other nodes) write their running totals to
BUILD/progress/NAME.json at most twice a second; the coordinator sums them. Files rather
than messages: the build directory is shared by every worker anyway, and an MPI rank
that is busy encoding need not service communication.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path

from modtrain.progress_bar import bar

REFRESH_S = 0.5  # terminal refresh and counter-file interval
LOG_EVERY_S = 30.0  # without a terminal (batch jobs), one line this often


class CounterFile:
    """A worker's cumulative (text bytes, tokens, finished slices), written now and then."""

    def __init__(self, build: Path, name: str) -> None:
        self.path = build / "progress" / f"{name}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.bytes = self.tokens = self.slices = 0
        self._last = 0.0

    def __call__(self, text_bytes: int, tokens: int) -> None:
        self.bytes += text_bytes
        self.tokens += tokens
        now = time.monotonic()
        if now - self._last >= REFRESH_S:
            self.flush()
            self._last = now

    def slice_done(self) -> None:
        self.slices += 1
        self.flush()

    def flush(self) -> None:
        tmp = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps([self.bytes, self.tokens, self.slices]))
        tmp.replace(self.path)


def read_counters(build: Path) -> tuple[int, int, int]:
    """Sum over workers of (text bytes, tokens, finished slices) of this run."""
    total = [0, 0, 0]
    for path in (build / "progress").glob("*.json"):
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # replaced while being read; the next refresh sees it
        total = [a + b for a, b in zip(total, values)]
    return total[0], total[1], total[2]


def clear_counters(build: Path) -> None:
    for path in (build / "progress").glob("*.json"):
        path.unlink(missing_ok=True)


class Display:
    """Slices done, MB of text, tokens, MB/s and tokens/s of this run: a progress bar with
    the time left on a terminal, one plain line every LOG_EVERY_S in batch logs."""

    def __init__(self, num_slices: int, kept: int = 0, enabled: bool = True) -> None:
        self.num_slices = num_slices
        self.kept = kept  # finished by an earlier run: not part of the rates
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self._last = self.start if not self.tty else 0.0  # logs: first line after a while
        self._bar = bar(total=num_slices, initial=kept, desc="prepare", unit="slice",
                        enabled=enabled) if self.tty else None

    def rates(self, text_bytes: int, tokens: int) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        return (f"{text_bytes / 1e6:,.1f} MB text | {tokens:,} tokens | "
                f"{text_bytes / 1e6 / elapsed:.2f} MB/s | {tokens / elapsed:,.0f} tokens/s")

    def line(self, text_bytes: int, tokens: int, slices: int) -> str:
        kept = f" ({self.kept} kept)" if self.kept else ""
        return (f"prepare: {self.kept + slices}/{self.num_slices} slices{kept} | "
                + self.rates(text_bytes, tokens))

    def show(self, counters: tuple[int, int, int], force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < (REFRESH_S if self.tty else LOG_EVERY_S):
            return
        self._last = now
        if self._bar is not None:
            self._bar.n = self.kept + counters[2]
            self._bar.set_postfix_str(self.rates(*counters[:2]), refresh=True)
            return
        sys.stderr.write(self.line(*counters) + "\n")
        sys.stderr.flush()

    def close(self, counters: tuple[int, int, int]) -> None:
        self.show(counters, force=True)
        if self._bar is not None:
            self._bar.close()
            if self.enabled:  # the bar leaves no trace: keep the totals
                sys.stderr.write(self.line(*counters) + "\n")


class Poller:
    """Refreshes a display from the counter files on a background thread."""

    def __init__(self, build: Path, display: Display) -> None:
        self.build, self.display = build, display
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(REFRESH_S):
            self.display.show(read_counters(self.build))

    def __enter__(self) -> Poller:
        if self.display.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if exc[0] is None:
            self.display.close(read_counters(self.build))
