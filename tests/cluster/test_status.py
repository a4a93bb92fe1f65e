"""`modtrain status RUN_DIR` from the run directory alone (no Slurm reachable)."""

from __future__ import annotations

import json

import pytest

from modtrain.cluster.status import status_lines
from modtrain.errors import ModtrainError


def test_status_reads_jobs_logs_and_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))  # no scontrol, no sacct
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "jobs.jsonl").write_text(json.dumps({"job": "41", "kind": "train"}) + "\n")
    for restart in (0, 1, 10):
        (logs / f"train-41.{restart}.log").write_text("...")
    (tmp_path / "config.yaml").write_text("train: {steps: 100}\n")
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"step": 10, "loss": 3.5}) + "\n" + json.dumps({"step": 10, "val_loss": 3.25})
        + "\n" + json.dumps({"step": 20, "loss": 3.125}) + "\n" + '{"step": 30, "lo')
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest").write_text("step_00000020")
    lines = status_lines(tmp_path)
    assert lines[1].startswith("job 41 train: UNKNOWN (no longer known to Slurm), 2 restart(s)")
    assert lines[1].endswith("train-41.10.log")
    assert lines[2] == "training: step 20/100, loss 3.1250, val loss 3.2500"
    assert lines[3] == "checkpoint: step_00000020"


def test_status_of_a_missing_run_dir_is_an_error(tmp_path):
    with pytest.raises(ModtrainError, match="is not a directory"):
        status_lines(tmp_path / "nope")
    assert status_lines(tmp_path)[1].startswith("jobs: none submitted")
