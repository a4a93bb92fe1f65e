"""benchmarks/mod_speedup.py: the FLOP limit and fractions, and a --quick run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modtrain.config import load_config
from modtrain.model.flops import training_flops_per_token
from modtrain.run_dir import read_metrics
from tests.conftest import cli_env
from tests.tools import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "mod_speedup.py"



def test_fractions_and_routed_blocks():
    bench = load_benchmark("mod_speedup")
    cell = bench.Cell(64, "all", 0.125, limit=3.0, speedup=2.7)
    assert cell.of_limit == pytest.approx(0.9)
    assert cell.of_gain == pytest.approx(0.85)
    # At capacity 1 the router only adds work: the limit is just under 1, no gain to share.
    assert bench.Cell(64, "all", 1.0, limit=0.99, speedup=0.95).of_gain is None
    assert bench.routed_layers("all", 4) == "[0,1,2,3]"
    assert bench.routed_layers("alternate", 4) == "null"
    with pytest.raises(SystemExit):  # no record would be left after the skipped ones
        bench.parse_args(["--steps", "5", "--log-interval", "5", "--skip-records", "1"])


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path, char_store, char_tokenizer):
    out, results = tmp_path / "out", tmp_path / "speedup.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--store", str(char_store), "--tokenizer",
         str(char_tokenizer), "--out", str(out), "--json", str(results)],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (cell,) = json.loads(results.read_text())["cells"]
    assert (cell["seq_length"], cell["routing"], cell["capacity"]) == (32, "alternate", 0.25)
    assert "| 32 | every other | 0.25 |" in proc.stdout

    runs = {name: out / "S32" / "alternate" / "c0.25" / "r0" / name for name in ("dense", "mod")}
    configs = {name: load_config(d / "config.yaml") for name, d in runs.items()}
    assert not configs["dense"].model.mod.enabled and configs["mod"].model.mod.enabled
    # The limit is the analytic FLOPs ratio of exactly what trained.
    flops = {name: training_flops_per_token(c.model, c.data.seq_length)
             for name, c in configs.items()}
    assert cell["limit"] == pytest.approx(flops["dense"] / flops["mod"])
    assert cell["limit"] > 1
    # The speed-up is the ratio of the runs' steady-state tokens/s (first record skipped).
    speeds = {}
    for name, d in runs.items():
        records = [r["tokens_per_s"] for r in read_metrics(d / "metrics.jsonl")
                   if "tokens_per_s" in r]
        assert len(records) == 4  # steps 1..4, one record each
        speeds[name] = sorted(records[1:])[1]  # the median of three
    assert cell["speedup"] == pytest.approx(speeds["mod"] / speeds["dense"])
    assert cell["of_limit"] == pytest.approx(cell["speedup"] / cell["limit"])
    assert not (runs["mod"] / "checkpoints").exists()  # only metrics are kept
