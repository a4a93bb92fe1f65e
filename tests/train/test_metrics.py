"""metrics.jsonl survives kills: whole lines only, and each step once after a resume."""

from __future__ import annotations

import json

import pytest

from modtrain.config import load_config
from modtrain.train.metrics import MetricsWriter
from tests.train.helpers import tiny_config


def test_reopening_drops_a_partial_last_line_and_appends(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    writer.write({"step": 1, "loss": 2.5})
    writer.close()
    with open(path, "a") as f:  # what a kill -9 in the middle of a write leaves
        f.write('{"step": 2, "lo')
    writer = MetricsWriter(path)
    writer.write({"step": 2, "loss": 2.25})
    writer.close()
    assert [json.loads(line) for line in path.read_text().splitlines()] == [
        {"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.25}]


def test_disabled_writer_creates_nothing(tmp_path):
    writer = MetricsWriter(tmp_path / "metrics.jsonl", enabled=False)
    writer.write({"step": 1})
    writer.close()
    assert not (tmp_path / "metrics.jsonl").exists() and not writer.enabled


def test_resuming_drops_the_records_past_the_checkpoint(tmp_path):
    """A run killed after logging step 60 resumes from the step-50 checkpoint: 60 goes (it
    belongs to a run that no longer exists), so step 60 is logged once, by the resumed run."""
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    for step in (40, 50):
        writer.write({"step": step, "loss": 2.0})
    writer.write({"step": 50, "val_loss": 2.1})
    writer.write({"step": 60, "loss": 1.9})
    writer.close()
    writer = MetricsWriter(path, resumed_step=50)
    writer.write({"step": 60, "loss": 1.8})
    writer.close()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["step"], "val_loss" in r) for r in records] == [
        (40, False), (50, False), (50, True), (60, False)]
    assert records[-1]["loss"] == 1.8
    assert not list(tmp_path.glob(".*tmp*"))  # rewritten through a renamed temporary file


def test_a_fresh_start_keeps_nothing_and_an_unchanged_file_is_not_rewritten(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 3, "loss": 1.0}\n')
    inode = path.stat().st_ino
    MetricsWriter(path, resumed_step=3).close()
    assert path.stat().st_ino == inode and path.read_text() == '{"step": 3, "loss": 1.0}\n'
    MetricsWriter(path, resumed_step=0).close()  # --resume auto found no checkpoint
    assert path.read_text() == ""


@pytest.mark.slow
def test_resume_logs_each_step_once(tmp_path, dist, char_store, char_tokenizer):
    """Killed after logging steps 4-6 but before saving step 6: resuming from step 3 drops
    the dead run's 4-6, then logs them again, once."""
    from modtrain.train.trainer import train

    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "run", steps=6,
                      extra=", save_interval: 3, eval_interval: 3")
    train(load_config(cfg))
    ckpts = tmp_path / "run" / "checkpoints"
    (ckpts / "latest").write_text("step_00000003")  # as if killed before step 6 was saved
    (ckpts / "step_00000006" / "modtrain.json").unlink()
    train(load_config(cfg, ["run.resume=auto"]))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "val_loss" in r] == [3, 6]
