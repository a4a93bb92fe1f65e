"""benchmarks/mode_runs.py: variants at equal training FLOPs, run end to end (--quick)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_runs_spend_equal_flops(tmp_path, char_store, char_tokenizer):
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, "benchmarks/mode_runs.py", "--quick", "--dense-steps", "8",
         "--variants", "dense,mode_staged,mode_integrated", "--out", str(tmp_path / "runs"),
         "--json", str(out), f"data.store={char_store}", f"data.tokenizer={char_tokenizer}",
         "model.num_layers=2", "model.hidden_size=32", "model.num_heads=2"],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["variant"]: r for r in json.loads(out.read_text())}
    assert rows["dense"]["steps"] == 8
    # Cheaper variants train longer; every run spends the dense budget within one step.
    budget = rows["dense"]["training_flops"]
    for row in rows.values():
        per_step = row["training_flops"] / row["steps"]
        assert abs(row["training_flops"] - budget) <= per_step / 2 + 1e-6 * budget
    assert rows["mode_integrated"]["steps"] > 8
    assert "| mode_staged |" in proc.stdout
