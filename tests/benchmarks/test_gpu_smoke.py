"""benchmarks/gpu_smoke.sh --cpu-tiny: every run of the GPU smoke check (dense, MoD, MoE,
both MoDE variants, save and resume, convert, generate) end to end on CPU, tiny models."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import cli_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cpu_tiny_mode_end_to_end(tmp_path):
    out = tmp_path / "smoke"
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_smoke.sh"), "--cpu-tiny"],
                          cwd=ROOT, env={**cli_env(), "OUT": str(out)}, capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| run | steps | loss |" in proc.stdout
    summary = json.loads((out / "smoke.json").read_text())
    rows = {r["run"]: r for r in summary["rows"]}
    assert set(rows) == {"dense-bf16", "mod-bf16", "moe-bf16", "mode-staged-bf16",
                         "mode-integrated-bf16", "resume-bf16"}
    for row in rows.values():
        assert row["steps"] == 20 and row["skipped"] == 0 and row["val_loss"] is not None
    assert rows["mod-bf16"]["router_bce_first"] is not None
    assert rows["dense-bf16"]["router_bce_first"] is None
    # Stopped at step 10 and resumed: the losses of an uninterrupted run, bit for bit.
    assert summary["resume"] == {"steps": 20, "max_abs_diff": 0.0, "bitwise": True}
    for name in ("dense-bf16", "mod-bf16"):
        assert (out / "exports" / name / "model.safetensors").is_file()
        assert (out / f"generate-{name}.txt").read_text().startswith("ROMEO:")
