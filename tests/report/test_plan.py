"""`modtrain plan`: the table, --json, the shipped 7B config, a model no layout fits, the
isoFLOP curve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modtrain.cli import main
from modtrain.model.cost import Layout
from modtrain.report.plan import isoflop_family, layouts, parse_bytes

ROOT = Path(__file__).resolve().parents[2]
SEVEN_B = str(ROOT / "configs" / "plan_7b_mod.yaml")


def test_the_7b_config_plans_and_the_best_layout_fits(capsys):
    assert main(["plan", SEVEN_B, "--gpus", "64", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "6.74 B parameters" in out and "TP  SP  PP" in out
    assert out.splitlines()[3].split()[13] == "yes"  # the fits column of the best row


def test_json_parses_and_rows_are_ranked(capsys):
    assert main(["plan", SEVEN_B, "--gpus", "64", "--json", "--top", "50"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert len(rows) == 50 and all(r["fits"] for r in rows[:5])
    times = [r["step_s"] for r in rows if r["fits"]]
    assert times == sorted(times)
    for r in rows:
        lay = r["layout"]
        assert lay["tensor"] * lay["pipeline"] * lay["data"] == 64
        assert lay["pipeline"] == 1 or lay["zero_stage"] <= 1  # DeepSpeed's pipeline rule


def test_a_model_no_layout_fits_names_the_smallest_requirement(capsys):
    assert main(["plan", SEVEN_B, "--gpus", "1", "--gpu-memory", "16GiB", "--global-batch",
                 "8", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "no layout fits in 16 GiB: the smallest needs" in out


def test_bad_memory_is_one_line_error(capsys):
    assert main(["plan", SEVEN_B, "--gpus", "8", "--gpu-memory", "lots"]) == 2
    assert "modtrain: error: --gpu-memory 'lots' is not a size" in capsys.readouterr().err
    assert parse_bytes("80GiB") == 80 * 2**30 and parse_bytes("40GB") == 40e9


def test_layouts_respect_heads_layers_and_experts():
    from modtrain.config import load_config

    m = load_config(None, ["model.vocab_size=64", "model.num_layers=6", "model.num_heads=6",
                           "model.hidden_size=96", "model.moe.enabled=true",
                           "model.moe.num_experts=4"]).model
    found = layouts(m, 8, 16, "bf16")
    assert {lay.tensor for lay in found} == {1, 2}  # 4 and 8 do not divide 6 heads
    assert {lay.pipeline for lay in found} <= {1, 2}
    assert Layout(1, 1, 8, 4, 0, 1) in found and all(lay.data % lay.expert == 0 for lay in found)


def test_isoflop_curve_prints_and_plots(tmp_path, capsys):
    out = tmp_path / "curve.png"
    assert main(["plan", "--isoflop", "1e20", "--seq", "2048", "--out", str(out)]) == 0
    assert out.stat().st_size > 0 and "mod c=0.125 every_other" in capsys.readouterr().out
    rows = isoflop_family(1e20, 2048)
    dense = {r["width"]: r for r in rows if r["variant"] == "dense"}
    mod = {r["width"]: r for r in rows if r["variant"] == "mod c=0.125 every_other"}
    for width, r in mod.items():  # same budget: cheaper tokens, so more of them
        assert r["tokens"] > dense[width]["tokens"]
        assert r["tokens"] * r["flops_per_token"] == pytest.approx(1e20)


def test_layouts_offer_selective_recompute_and_sequence_parallelism_where_it_runs():
    from modtrain.config import load_config

    m = load_config(None, ["model.vocab_size=64", "model.num_layers=4", "model.num_heads=4",
                           "model.hidden_size=64"]).model
    found = layouts(m, 8, 16, "bf16")
    assert {lay.recompute for lay in found} == {"none", "selective", "full"}
    sp = [lay for lay in found if lay.sequence_parallel]
    assert sp and all(lay.tensor > 1 and lay.pipeline == 1 for lay in sp)


def test_calibration_replaces_peak_times_mfu(tmp_path, capsys):
    calib = tmp_path / "calibration.json"
    calib.write_text(json.dumps({"format": "modtrain-calibration/1",
                                 "achieved_flops_per_s": 98.9e12}))
    args = [SEVEN_B, "--gpus", "8", "--json", "--top", "1", "--global-batch", "64"]
    assert main(["plan", *args, "--calibration", str(calib)]) == 0
    calibrated = json.loads(capsys.readouterr().out)["rows"][0]
    assert main(["plan", *args, "--mfu", "0.1"]) == 0  # 989 x 0.1: the same FLOP/s
    assumed = json.loads(capsys.readouterr().out)["rows"][0]
    assert calibrated["compute_s"] == pytest.approx(assumed["compute_s"])


@pytest.mark.parametrize("text, problem", [
    ("{", "is not JSON"), ('{"format": "other"}', "is not a modtrain-calibration/1 file"),
    ('{"format": "modtrain-calibration/1", "achieved_flops_per_s": -1}', "not a positive"),
])
def test_a_bad_calibration_is_one_line_error(tmp_path, capsys, text, problem):
    calib = tmp_path / "c.json"
    calib.write_text(text)
    assert main(["plan", SEVEN_B, "--gpus", "8", "--calibration", str(calib)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("modtrain: error: --calibration") and problem in err
    assert "benchmarks/calibrate.py" in err
