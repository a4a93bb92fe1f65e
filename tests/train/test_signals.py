"""A stop signal before training has started ends `modtrain train` at once with one line."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import cli_env


def _catches(pid: int, sig: signal.Signals) -> bool:
    """Whether the process has a handler for `sig` (SigCgt in /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return False


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_during_start_up_exits_at_once(tmp_path, sig, code):
    config = tmp_path / "c.yaml"
    config.write_text("run: {dir: %s}\n" % (tmp_path / "run"))
    proc = subprocess.Popen([sys.executable, "-m", "modtrain", "train", str(config)],
                            env=cli_env(), stderr=subprocess.PIPE, text=True)
    # once SIGTERM is caught (shield_stop_signals' last step) training is still far away:
    # the command groups import torch; before this change the signal was held until then
    deadline = time.monotonic() + 60
    while not _catches(proc.pid, signal.SIGTERM) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert stderr.strip().splitlines() == [
        f"modtrain: stopped by {sig.name} before training started; nothing to save"]
    assert not (tmp_path / "run").exists()


RANK = """
import time
from modtrain.train.signals import StopFlag
flag = StopFlag().install().watch_parent(interval=0.05)
print("watching", flush=True)
deadline = time.monotonic() + 60
while not flag.requested and time.monotonic() < deadline:
    time.sleep(0.02)
print(flag.requested, flag.signal_name, flush=True)
"""
LAUNCHER = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", sys.argv[1]])
time.sleep(600)
"""


def test_a_rank_learns_that_its_launcher_was_killed():
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, RANK], env=cli_env(),
                                stdout=subprocess.PIPE, text=True)
    assert launcher.stdout.readline() == "watching\n"
    launcher.kill()  # SIGKILL: the launcher can forward nothing
    launcher.wait()
    # the rank (reparented, still writing to the pipe) stops as if signalled
    assert launcher.stdout.readline() == f"True the death of launcher pid {launcher.pid}\n"


@pytest.mark.slow
def test_a_term_to_the_deepspeed_runner_stops_its_ranks(tmp_path):
    """On one node DeepSpeed's runner forwards no SIGTERM to its per-node launcher (it
    installs handlers only for multi-node pdsh): its ranks watch the runner as well."""
    rank = tmp_path / "rank.py"
    rank.write_text(RANK)
    env = {**cli_env(), "DS_ACCELERATOR": "cpu"}
    runner = subprocess.Popen(
        [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "1",
         "--master_addr", "127.0.0.1", "--master_port", "29731", str(rank)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    lines = iter(runner.stdout.readline, "")
    assert next(line for line in lines if line.startswith("watching")) == "watching\n"
    runner.terminate()
    runner.wait(timeout=60)
    assert next(lines) == f"True the death of launcher pid {runner.pid}\n"
