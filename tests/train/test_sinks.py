"""Metric sinks: TensorBoard event files hold what metrics.jsonl holds."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from modtrain.run_dir import TENSORBOARD_DIR
from modtrain.train.sinks import build_sinks

pytest.importorskip("tensorboard")


def _scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_and_jsonl_get_the_same_records(tmp_path):
    sinks = build_sinks(tmp_path, "metrics.jsonl")
    records = [{"step": s, "loss": 4.0 - s / 10, "lr": 1e-3, "routed_frac/layer1": 0.125}
               for s in (10, 20, 30)] + [{"step": 30, "val_loss": 3.5, "val_loss/web": 3.25}]
    for record in records:
        for sink in sinks:
            sink.log(record)
    for sink in sinks:
        sink.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == records
    scalars = _scalars(tmp_path / TENSORBOARD_DIR)
    assert [s for s, _ in scalars["loss"]] == [10, 20, 30]
    assert scalars["loss"][-1][1] == pytest.approx(1.0)
    assert scalars["val_loss"] == [(30, 3.5)] and scalars["val_loss/web"] == [(30, 3.25)]
    assert set(scalars) == {"loss", "lr", "routed_frac/layer1", "val_loss", "val_loss/web"}


def test_non_finite_values_are_left_out_and_inspect_reads_the_files(tmp_path):
    sinks = build_sinks(tmp_path, "metrics.jsonl")
    for sink in sinks:
        sink.log({"step": 1, "loss": float("nan"), "grad_norm": 2.0})
        sink.close()
    assert "loss" not in _scalars(tmp_path / TENSORBOARD_DIR)
    proc = subprocess.run([sys.executable, "-m", "tensorboard.main", "--inspect", "--logdir",
                           str(tmp_path / TENSORBOARD_DIR)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "grad_norm" in proc.stdout


def test_turned_off_writes_jsonl_only(tmp_path):
    sinks = build_sinks(tmp_path, "metrics.jsonl", tensorboard=False)
    assert len(sinks) == 1
    sinks[0].close()
    assert not (tmp_path / TENSORBOARD_DIR).exists()


def test_progress_line_shows_routed_fraction_and_mfu(capsys):
    from modtrain.train.metrics import Progress
    from modtrain.train.sinks import ProgressSink

    sink = ProgressSink(Progress(100))
    sink.log({"step": 10, "loss": 2.5, "lr": 1e-3, "tokens_per_s": 1000.0,
              "routed_frac/layer1": 0.125, "routed_frac/layer3": 0.25, "mfu": 0.41})
    sink.log({"step": 10, "val_loss": 2.25})
    sink.log({"step": 20, "val_loss": 2.0, "val_loss/web": 1.5, "val_loss/code": 2.5})
    err = capsys.readouterr().err
    assert "step 10/100 | loss 2.5000 | lr 1.00e-03 | 1,000 tok/s | routed 0.188 | MFU 41.0%" \
        in err
    assert "step 10: val loss 2.2500\n" in err
    assert "step 20: val loss 2.0000 (web 1.5000, code 2.5000)" in err


def test_wandb_offline_run_gets_the_records(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    sinks = build_sinks(tmp_path, "metrics.jsonl", tensorboard=False, wandb_project="modtrain",
                        config={"train": {"steps": 20}})
    wandb_sink = sinks[-1]
    records = [{"step": step, "loss": 5.0 - step / 10, "lr": 1e-3, "skipped": True,
                "grad_norm": float("nan")} for step in (10, 20)]
    # val_loss joins step 20's row; W&B writes a row when the step moves on (or at close).
    for record in [*records, {"step": 20, "val_loss": 2.5}, {"step": 30, "loss": 2.0}]:
        for sink in sinks:
            sink.log(record)
    summary = dict(wandb_sink.run.summary)
    assert summary["loss"] == pytest.approx(3.0) and summary["val_loss"] == 2.5
    assert "grad_norm" not in summary and "skipped" not in summary
    assert wandb_sink.run.config["train"] == {"steps": 20}
    for sink in sinks:
        sink.close()
    assert len(list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))) == 1
