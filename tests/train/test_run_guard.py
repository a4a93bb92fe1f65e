"""An earlier run in run.dir is continued, moved aside, or refused; never overwritten."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from modtrain.config import load_config
from modtrain.errors import ModtrainError
from modtrain.train.run_guard import check_run_dir, hold_run_dir, move_aside, previous_run
from tests.conftest import cli_env
from tests.train.helpers import step_losses, tiny_config


def _fake_run(run_dir, step=5):
    """What a finished run leaves: a complete checkpoint, `latest`, metric records."""
    tag = f"step_{step:08d}"
    (run_dir / "checkpoints" / tag).mkdir(parents=True)
    (run_dir / "checkpoints" / tag / "modtrain.json").write_text("{}")
    (run_dir / "checkpoints" / "latest").write_text(tag)
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": step, "loss": 1.0}) + "\n")


def test_new_or_empty_directories_are_not_a_run(tmp_path):
    assert previous_run(tmp_path / "missing") is None
    check_run_dir(tmp_path / "missing", "none", False)  # created
    assert (tmp_path / "missing").is_dir()
    (tmp_path / "started" / "checkpoints" / ".tmp-step_00000001").mkdir(parents=True)
    (tmp_path / "started" / "config.yaml").write_text("run: {}\n")
    (tmp_path / "started" / "metrics.jsonl").write_text("")
    check_run_dir(tmp_path / "started", "none", False)  # killed before its first record


@pytest.mark.parametrize("what", ["checkpoint", "metrics"])
def test_an_earlier_run_is_refused_naming_the_choices(tmp_path, what):
    run_dir = tmp_path / "run"
    _fake_run(run_dir)
    if what == "metrics":  # killed after logging, before the first checkpoint
        (run_dir / "checkpoints" / "step_00000005" / "modtrain.json").unlink()
    with pytest.raises(ModtrainError) as e:
        check_run_dir(run_dir, "none", False)
    assert "already holds a run" in str(e.value)
    for choice in ("--resume auto", "new run.dir", "--overwrite", f"{run_dir}.old-"):
        assert choice in str(e.value)
    check_run_dir(run_dir, "auto", False)
    check_run_dir(run_dir, "none", True)
    with pytest.raises(ModtrainError, match="only one of them"):
        check_run_dir(run_dir, "auto", True)


def test_move_aside_keeps_the_old_run(tmp_path):
    run_dir = tmp_path / "run"
    _fake_run(run_dir)
    first = move_aside(run_dir)
    _fake_run(run_dir, step=7)
    second = move_aside(run_dir)  # twice within a second: another name, nothing lost
    assert first != second and not run_dir.exists()
    assert (first / "checkpoints" / "latest").read_text() == "step_00000005"
    assert (second / "checkpoints" / "latest").read_text() == "step_00000007"
    assert first.name.startswith("run.old-")


def test_the_cli_refuses_before_touching_the_run(tmp_path, char_store, char_tokenizer):
    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "run")
    _fake_run(tmp_path / "run")
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    proc = subprocess.run([sys.executable, "-m", "modtrain", "train", str(cfg)], env=cli_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("modtrain: error: "), proc.stderr
    assert "--resume auto" in lines[0] and "--overwrite" in lines[0]
    after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before


@pytest.mark.slow
def test_overwrite_moves_the_earlier_run_aside(tmp_path, dist, char_store, char_tokenizer):
    from modtrain.train.trainer import train

    config = load_config(tiny_config(tmp_path, char_store, char_tokenizer, "run", steps=2))
    _fake_run(tmp_path / "run", step=5)
    train(config, overwrite=True)
    (old,) = tmp_path.glob("run.old-*")
    assert (old / "checkpoints" / "latest").read_text() == "step_00000005"
    assert sorted(step_losses(tmp_path / "run")) == [1, 2]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text() == "step_00000002"



HOLDER = """
import sys, time
from pathlib import Path
from modtrain.train.run_guard import hold_run_dir
with hold_run_dir(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process that holds tmp_path/run as a training would."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], env=cli_env(),
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "held\n"
    yield run_dir, proc
    proc.kill()
    proc.wait()


def test_a_second_training_into_a_held_run_dir_names_the_holder(holder):
    run_dir, proc = holder
    match = rf"in use by another training \(host {socket.gethostname()}, pid {proc.pid}\)"
    with pytest.raises(ModtrainError, match=match), hold_run_dir(run_dir):
        pass


def test_modtrain_train_into_a_held_run_dir_is_one_line(holder, char_store, char_tokenizer):
    run_dir, proc = holder
    cfg = tiny_config(run_dir.parent, char_store, char_tokenizer, "run")
    done = subprocess.run([sys.executable, "-m", "modtrain", "train", str(cfg), "--resume",
                           "auto"], env=cli_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith(
        f"modtrain: error: run.dir={run_dir} is in use by another training")
    assert f"pid {proc.pid}" in done.stderr
    assert not (run_dir / "checkpoints").exists()


def test_the_lock_a_killed_training_left_is_taken_over_with_a_warning(holder, capsys):
    run_dir, proc = holder
    proc.kill()  # kill -9: no clean end, its host and pid stay in the lock file
    proc.wait()
    with hold_run_dir(run_dir):
        assert (run_dir / ".modtrain.lock").read_text().split()[1] == str(os.getpid())
    err = capsys.readouterr().err
    assert f"took over {run_dir / '.modtrain.lock'} from pid {proc.pid}" in err
    with hold_run_dir(run_dir):  # that run ended cleanly: nothing to warn about
        pass
    assert capsys.readouterr().err == ""


def test_moving_a_run_aside_keeps_the_lock_on_the_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    _fake_run(run_dir)
    with hold_run_dir(run_dir):
        old = move_aside(run_dir)
        assert not (old / ".modtrain.lock").exists()
        with pytest.raises(ModtrainError, match="in use by another training"), \
                hold_run_dir(run_dir):
            pass


@pytest.fixture
def read_only():
    """Make a directory read-only for this user, root included (chattr +i)."""
    made: list = []

    def make(path):
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(0o555)
        if os.geteuid() == 0:
            subprocess.run(["chattr", "+i", str(path)], check=True)
        made.append(path)
        return path

    yield make
    for path in made:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o755)


@pytest.mark.parametrize("sub", ["checkpoints", "tensorboard", "logs"])
def test_an_unwritable_directory_the_run_writes_is_found_at_preflight(tmp_path, read_only,
                                                                      sub):
    target = read_only(tmp_path / "run" / sub)
    with pytest.raises(ModtrainError, match=rf"^{target} is not a writable directory"):
        check_run_dir(tmp_path / "run", "auto", False)
