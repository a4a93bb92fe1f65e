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
    (tmp_path / "checkpoints" / "step_00000020").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step_00000020" / "modtrain.json").write_text("{}")
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


def _metrics_and_tags(run, *tags):
    (run / "metrics.jsonl").write_text(json.dumps({"step": 20, "loss": 3.0}) + "\n")
    for tag in tags:
        (run / "checkpoints" / tag).mkdir(parents=True)
        (run / "checkpoints" / tag / "modtrain.json").write_text("{}")


@pytest.mark.parametrize("latest", ["", "\x00garbage", "step_00000099"])
def test_status_names_the_newest_complete_checkpoint_past_a_bad_latest(tmp_path, latest):
    _metrics_and_tags(tmp_path, "step_00000010", "step_00000020")
    (tmp_path / "checkpoints" / "latest").write_text(latest)
    line = status_lines(tmp_path)[-1]
    assert line.startswith("checkpoint: step_00000020 (newest complete; ")
    assert line.endswith("which is not a complete checkpoint)")


@pytest.mark.parametrize("config_text,problem", [
    ("train: [1, 2\n", "config.yaml:2:1: invalid YAML"),
    ("- a list\n", "holds no integer train.steps"),
    ("train: {steps: many}\n", "holds no integer train.steps"),
])
def test_status_on_a_damaged_config_still_shows_the_run(tmp_path, config_text, problem):
    _metrics_and_tags(tmp_path, "step_00000020")
    (tmp_path / "config.yaml").write_text(config_text)
    lines = status_lines(tmp_path)
    assert problem in next(line for line in lines if line.startswith("config: "))
    assert "training: step 20, loss 3.0000" in lines
    assert lines[-1] == "checkpoint: step_00000020"
