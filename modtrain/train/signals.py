"""Preemption: a signal on any rank becomes a save at one agreed step and a requeue exit.

SLURM sends SIGTERM at preemption (and SIGUSR1 before the time limit with
`--signal=USR1@SECONDS`). The handler only records the signal; the training loop
all-reduces the flag once per step, so every rank saves at the same step, then exits
with EXIT_REQUEUE, which slurm/train.sbatch turns into `scontrol requeue`.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

import psutil

from modtrain import launcher

# sysexits.h EX_TEMPFAIL: "a temporary failure; the user is invited to retry".
EXIT_REQUEUE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# Before training starts these end the process at once (SIGUSR1, the pre-timeout warning,
# is held for training instead: commands.shield_stop_signals).
EXIT_AT_START = (signal.SIGTERM, signal.SIGINT)


def exit_before_training(signum: int, frame: FrameType | None) -> None:
    """A stop before training has started: nothing to save, so exit at once (128 + signal).

    os._exit, because start-up may sit in a wait (a rendezvous, a build lock) that a
    raised exception would not leave, and no state needs flushing yet.
    """
    print(f"modtrain: stopped by {signal.Signals(signum).name} before training started; "
          "nothing to save", file=sys.stderr, flush=True)
    os._exit(128 + signum)


class RequeueRequested(Exception):
    """Raised after the checkpoint of a signal-triggered stop is complete."""

    def __init__(self, step: int, tag: str) -> None:
        super().__init__(f"stopped by signal at step {step}; saved {tag}; exit {EXIT_REQUEUE}")
        self.step = step
        self.tag = tag


DEEPSPEED_NODE_LAUNCHER = "deepspeed.launcher.launch"


def launchers(pid: int | None = None) -> list[psutil.Process]:
    """The processes whose death should stop `pid` (default: this process): its parent and,
    when that is DeepSpeed's per-node launcher, the runner that started it."""
    parent = psutil.Process(pid).parent()
    if parent is None:
        return []
    chain = [parent]
    try:
        if DEEPSPEED_NODE_LAUNCHER in " ".join(parent.cmdline()):
            runner = parent.parent()
            if runner is not None and "deepspeed" in " ".join(runner.cmdline()):
                chain.append(runner)
    except psutil.Error:  # the launcher is already gone: the poll says so at once
        pass
    return chain


def _alive(process: psutil.Process) -> bool:
    """Running and not a zombie (a killed launcher whose own parent has not reaped it)."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class StopFlag:
    """Installs handlers for STOP_SIGNALS that set `requested`; `restore` puts the old ones back."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self._previous: dict[int, signal._HANDLER] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True
        self.signal_name = signal.Signals(signum).name

    def watch_parent(self, interval: float = 1.0) -> StopFlag:
        """Stop like on a signal when this process's launcher dies.

        After SIGKILL of a per-node launcher (deepspeed, torchrun) its ranks are reparented
        and would train on unwatched; a daemon thread polls the launchers instead, so they
        save at the next step and exit 75 like any preempted run. Under DeepSpeed's
        per-node launcher the `deepspeed` runner above it is watched too: on one node the
        runner forwards no SIGTERM (it installs handlers only for multi-node pdsh), so a
        TERM to it would otherwise leave its ranks training.
        """
        watched = launchers()

        def poll() -> None:
            while (gone := next((p for p in watched if not _alive(p)), None)) is None:
                threading.Event().wait(interval)
            self.requested = True
            self.signal_name = f"the death of launcher pid {gone.pid}"

        threading.Thread(target=poll, name="modtrain-parent-watch", daemon=True).start()
        return self

    def install(self) -> StopFlag:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        if launcher.detect().launcher != "single":  # a launcher's rank: watch the launcher
            self.watch_parent()
        if signal.getsignal(signal.SIGINT) is exit_before_training:  # Ctrl-C: as usual again
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT,
                                                          signal.default_int_handler)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
