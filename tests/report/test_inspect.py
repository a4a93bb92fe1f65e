"""`modtrain inspect` on each kind of artifact, against what training and convert wrote."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from modtrain.errors import ModtrainError
from modtrain.report.inspect import inspect_path
from tests.conftest import cli_env


@pytest.mark.slow
def test_run_checkpoint_export_and_store(report_run, report_export, char_store, dist):
    from modtrain.model import GPT
    from modtrain.report.inspect import _model_facts

    run = inspect_path(report_run)
    assert run["kind"] == "run" and run["latest_checkpoint"]["step"] == 4
    assert run["last_metrics"]["step"] == 4 and "val_loss" in run["last_metrics"]
    saved = yaml.safe_load((report_run / "config.yaml").read_text())
    assert run["data"]["store"]["content_sha256"] == inspect_path(char_store)["content_sha256"]
    ckpt = inspect_path(report_run / "checkpoints")
    assert ckpt["kind"] == "checkpoint" and ckpt["layout"]["zero_stage"] == 1
    # The parameter count is the real model's.
    from modtrain.inference.hf_layout import model_config

    model = ckpt["config"]["model"]
    real = sum(p.numel() for p in GPT(model_config(model)).parameters())
    assert ckpt["model"]["parameters"] == real == _model_facts(
        model, saved["data"]["seq_length"])["parameters"]
    export = inspect_path(report_export)
    assert export["kind"] == "export" and export["step"] == 4
    assert export["tokenizer"]["sha256"] == run["data"]["tokenizer"]["sha256"]


@pytest.mark.slow
def test_cli_prints_yaml(report_run):
    proc = subprocess.run([sys.executable, "-m", "modtrain", "inspect", str(report_run)],
                          capture_output=True, text=True, env=cli_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["kind"] == "run"


def test_unknown_path_is_one_line(tmp_path):
    with pytest.raises(ModtrainError, match="is not a run directory, checkpoint") as err:
        inspect_path(tmp_path)
    assert "\n" not in str(err.value)
