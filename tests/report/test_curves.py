"""`modtrain plot`: curves from real runs, every x axis, and one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest

from modtrain.errors import ModtrainError
from modtrain.report.curves import X_AXES, plot_runs, read_run, x_value


def _png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.parametrize("axis", X_AXES)
def test_plot_writes_a_png_for_every_axis(report_run, tmp_path, axis):
    out = plot_runs([report_run, report_run], tmp_path / f"{axis}.png", axis)
    assert _png(out)


@pytest.mark.slow
def test_curves_follow_the_metrics_file(report_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    curves = read_run(run)
    assert [s for s, _ in curves.train] == [r["step"] for r in records if "loss" in r]
    assert [v for _, v in curves.val] == [r["val_loss"] for r in records if "val_loss" in r]
    step = curves.train[-1][0]
    assert x_value(curves, step, "tokens") == step * curves.tokens_per_step
    # A line a kill cut short is skipped, not an error.
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 99, "lo')
    assert read_run(run).train == curves.train


def test_not_a_run_directory_is_one_line(tmp_path):
    with pytest.raises(ModtrainError, match="not a run directory") as err:
        read_run(tmp_path)
    assert "\n" not in str(err.value)


def test_unknown_axis_is_refused(tmp_path):
    with pytest.raises(ModtrainError, match="--x epochs is unknown"):
        plot_runs([tmp_path], tmp_path / "x.png", "epochs")
