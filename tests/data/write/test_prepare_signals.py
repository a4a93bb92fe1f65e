"""`data prepare --workers N` stopped by SIGTERM/SIGINT or killed with -9 leaves no worker,
forkserver or resource-tracker process behind; a stop signal is one line and exit 128+N."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modtrain.resources import TINYSHAKESPEARE
from tests.conftest import cli_env


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> Path:
    """~45 MB: two workers need tens of seconds, so a signal lands mid-run."""
    path = tmp_path_factory.mktemp("big") / "big.txt"
    path.write_text(TINYSHAKESPEARE.read_text() * 40)
    return path


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if fields[0] != "Z":  # a zombie has exited; only its parent's wait is missing
            out.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return out


def _descendants(pid: int) -> set[int]:
    children, found, todo = _children(), set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pids: set[int]) -> set[int]:
    living = {p for kids in _children().values() for p in kids}
    return pids & living


def _start(tmp_path: Path, corpus: Path, char_tokenizer: Path):
    cmd = [sys.executable, "-m", "modtrain", "data", "prepare", "--tokenizer",
           str(char_tokenizer), "--input", str(corpus), "--out", str(tmp_path / "s.zarr"),
           "--workers", "2", "--slice-size", "1", "--quiet"]
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # resource tracker + forkserver + 2 workers
        helpers = _descendants(proc.pid)
        if len(helpers) >= 4:
            time.sleep(1.0)  # the workers are encoding
            assert proc.poll() is None, "prepare finished before it could be stopped"
            return proc, _descendants(proc.pid)
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.05)
    proc.kill()
    raise TimeoutError("the workers did not start")


def _assert_all_gone(helpers: set[int], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while _alive(helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = _alive(helpers)
    for pid in left:  # do not leave them to the next test
        os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} processes left behind: {sorted(left)}"


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_stop_signal_stops_the_workers_in_one_line(tmp_path, big_corpus, char_tokenizer, sig):
    proc, helpers = _start(tmp_path, big_corpus, char_tokenizer)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"modtrain: data prepare stopped by {sig.name}"), stderr
    _assert_all_gone(helpers)
    assert not (tmp_path / "s.zarr").exists()


@pytest.mark.slow
def test_kill_9_of_the_parent_orphans_no_worker(tmp_path, big_corpus, char_tokenizer):
    proc, helpers = _start(tmp_path, big_corpus, char_tokenizer)
    proc.kill()
    proc.wait(timeout=30)
    _assert_all_gone(helpers)
