"""A stop signal that arrives before training installs its handlers is held, then delivered."""

from __future__ import annotations

import os
import signal
import time

from modtrain.train.commands import defer_stop_signals
from modtrain.train.signals import STOP_SIGNALS, StopFlag


def test_an_early_signal_reaches_the_training_handler():
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        defer_stop_signals(STOP_SIGNALS)
        os.kill(os.getpid(), signal.SIGUSR1)  # still starting up: not fatal, held
        time.sleep(0.2)
        flag = StopFlag().install()
        deadline = time.monotonic() + 5
        while not flag.requested and time.monotonic() < deadline:
            time.sleep(0.02)
        assert flag.requested and flag.signal_name == "SIGUSR1"
        flag.restore()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
