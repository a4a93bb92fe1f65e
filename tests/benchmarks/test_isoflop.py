"""benchmarks/isoflop.py: the matched FLOPs budget, and a --quick run end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from modtrain.config import config_from_dict
from modtrain.model.flops import training_flops_per_token
from modtrain.run_dir import read_metrics
from tests.conftest import cli_env
from tests.tools import load_benchmark

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "isoflop.py"
TINY = ["model.hidden_size=32", "model.num_heads=2"]



def test_plan_spends_the_dense_budget(char_store, char_tokenizer):
    isoflop = load_benchmark("isoflop")
    data = [f"data.store={char_store}", f"data.tokenizer={char_tokenizer}"]
    plans = isoflop.plan_corpus("shakespeare", list(isoflop.VARIANTS), data, 600, quick=False)
    by_name = {p.variant: p for p in plans}
    budget = by_name["dense"].total_flops
    assert by_name["dense"].steps == 600
    for p in plans:  # rounding to whole steps: within half a step of the budget
        assert abs(p.total_flops - budget) <= 0.5 * p.flops_per_token * p.tokens_per_step
    # Routing every other block at 12.5% makes a same-size model cheaper (more steps), and
    # the larger MoD models cost more per token than the baseline (fewer steps).
    assert by_name["mod_same"].flops_per_token < by_name["dense"].flops_per_token
    assert by_name["mod_same"].steps > 600 > by_name["mod_deep"].steps
    assert by_name["mod_deep"].params > 1.5 * by_name["dense"].params


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path, char_store, char_tokenizer):
    out, results = tmp_path / "out", tmp_path / "isoflop.json"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--corpora", "shakespeare", "--variants",
         "dense,mod_same", "--out", str(out), "--json", str(results), "--set",
         f"data.store={char_store}", f"data.tokenizer={char_tokenizer}", *TINY],
        check=True, cwd=ROOT, env=cli_env(), capture_output=True,
        timeout=900)  # generous: a first run may build DeepSpeed's CPU op (minutes)
    rows = {r["variant"]: r for r in json.loads(results.read_text())["rows"]}
    assert set(rows) == {"dense", "mod_same"}
    for name, row in rows.items():
        run_dir = out / "shakespeare" / name
        # What trained is what was counted: the run's own config gives the row's FLOPs/token.
        config = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()))
        assert config.model.hidden_size == 32
        assert config.model.mod.enabled == (name != "dense")
        fpt = training_flops_per_token(config.model, config.data.seq_length)
        assert row["flops_per_token"] == pytest.approx(fpt)
        steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]
        assert steps[-1] == row["steps"] == config.train.steps
        assert row["val_loss"] is not None and row["wall_s"] > 0
    assert rows["mod_same"]["steps"] > rows["dense"]["steps"]
    assert rows["dense"]["val_at_dense_time"] == pytest.approx(rows["dense"]["val_loss"])
    table = (out / "isoflop.md").read_text()
    assert "| shakespeare | dense |" in table and "| shakespeare | mod_same |" in table
    for axis in ("flops", "time"):
        assert (out / f"isoflop_shakespeare_{axis}.png").read_bytes()[:4] == b"\x89PNG"
