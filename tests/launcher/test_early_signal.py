"""Stop signals reach training only: a child process survives them, and one that arrives
before training installs its handlers is held, then delivered."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

SCRIPT = """
import os, signal, subprocess, sys, time
from modtrain.train.commands import shield_stop_signals
from modtrain.train.signals import STOP_SIGNALS, StopFlag

shield_stop_signals(STOP_SIGNALS)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1)"])
time.sleep(0.3)
child.send_signal(signal.SIGUSR1)  # what srun does to every process of a task
os.kill(os.getpid(), signal.SIGUSR1)  # still starting up: held, not fatal
time.sleep(0.3)
flag = StopFlag().install()
deadline = time.monotonic() + 10
while not flag.requested and time.monotonic() < deadline:
    time.sleep(0.02)
print("child", child.wait(), "flag", flag.requested, flag.signal_name)
"""


def test_children_survive_and_an_early_signal_reaches_training():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["child", "0", "flag", "True", "SIGUSR1"]


def test_modtrain_train_survives_a_stop_signal_while_importing(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "modtrain", "train",
                             str(tmp_path / "missing.yaml")], stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # the command groups (torch, megatron) are still importing
    proc.send_signal(signal.SIGUSR1)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr  # the config error, not death by SIGUSR1 (-10)
    assert "modtrain: error:" in stderr
