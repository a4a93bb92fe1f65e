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


def _fake_run(root, config_text=None, state_text=None):
    from modtrain.config import load_config, save_config

    root.mkdir()
    save_config(load_config(None), root / "config.yaml")
    if config_text is not None:
        (root / "config.yaml").write_text(config_text)
    if state_text is not None:
        tag = root / "checkpoints" / "step_00000004"
        tag.mkdir(parents=True)
        (tag / "modtrain.json").write_text(state_text)
        (root / "checkpoints" / "latest").write_text("step_00000004")
    return root


@pytest.mark.parametrize("config_text,state_text,target,message", [
    ("model: [1, 2\n", None, "", r"config.yaml:2:1: invalid YAML"),
    ("- just a list\n", None, "", r"cannot be described: its config.yaml .* is damaged"),
    ("model: {}\n", None, "", r"cannot be described: its config.yaml .* is damaged \(KeyError"),
    (None, '{"step": 4, "conf', "", r"latest checkpoint's modtrain.json is damaged"),
    (None, '{"step": 4}', "checkpoints", r"latest checkpoint's modtrain.json is damaged"),
    (None, "\xff\xfe", "checkpoints/step_00000004", r"modtrain.json is damaged"),
])
def test_a_damaged_run_or_checkpoint_is_one_line(tmp_path, config_text, state_text, target,
                                                 message):
    run = _fake_run(tmp_path / "run", config_text, state_text)
    with pytest.raises(ModtrainError, match=message) as err:
        inspect_path(run / target)
    assert "\n" not in str(err.value)


def test_a_metrics_line_that_is_not_utf8_or_not_a_record_is_skipped(tmp_path):
    from modtrain.report.curves import read_run

    run = _fake_run(tmp_path / "run")
    (run / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 2.5}\n\xff\xfe\x00 garbage\n'
                                        b'{"step": "x", "loss": 1}\n{"step": 2, "loss": "y"}\n'
                                        b'{"step": 3, "loss": 2.0, "val_loss": 2.25}\n')
    curves = read_run(run)
    assert curves.train == [(1, 2.5), (3, 2.0)] and curves.val == [(3, 2.25)]
    assert inspect_path(run)["last_metrics"]["step"] == 3


@pytest.mark.parametrize("latest", ["", "garbage\x00", "step_00000099"])
def test_a_bad_latest_hides_no_checkpoint_from_inspect(tmp_path, latest):
    run = _fake_run(tmp_path / "run")
    state = inspect_path(run)  # no checkpoint yet
    assert state["latest_checkpoint"] is None
    import json

    from modtrain.config import load_config
    from modtrain.config.load import config_to_dict

    config = config_to_dict(load_config(None))
    config["model"]["vocab_size"] = 64
    for step in (2, 4):
        tag = run / "checkpoints" / f"step_{step:08d}"
        tag.mkdir(parents=True)
        (tag / "modtrain.json").write_text(json.dumps({"step": step, "config": config}))
    (run / "checkpoints" / "latest").write_text(latest)
    assert inspect_path(run)["latest_checkpoint"]["step"] == 4
    assert inspect_path(run / "checkpoints")["step"] == 4
