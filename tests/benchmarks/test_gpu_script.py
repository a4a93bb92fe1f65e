"""benchmarks/gpu.sh --cpu-tiny: every step of the GPU benchmark (BPE, store, dense and MoD
training, export, decode, summary) end to end on CPU, with one tiny model size."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from modtrain.config import load_config
from modtrain.model.flops import training_flops_per_token
from tests.conftest import cli_env

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_cpu_tiny_mode_end_to_end(tmp_path):
    out = tmp_path / "bench"
    env = {**cli_env(), "OUT": str(out), "GPU_BENCH_SIZES": "tiny:2:2:32"}
    # About a minute of processor time; the limit only guards against a hang on shared cores.
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--cpu-tiny"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| run | params | layers x width |" in proc.stdout

    rows = {r["run"]: r for r in json.loads((out / "summary.json").read_text())["rows"]}
    assert set(rows) == {"tiny-dense", "tiny-mod"}
    for name, row in rows.items():
        config = load_config(out / "train" / name / "config.yaml")
        assert (config.model.num_layers, config.model.hidden_size) == (2, 32)
        assert config.model.mod.enabled == name.endswith("mod")
        # Trained on the BPE store built from the embedded corpus, by this run.
        assert config.data.store == str(out / "data.zarr")
        assert config.model.vocab_size == 512
        assert row["flops_per_token"] == pytest.approx(
            training_flops_per_token(config.model, config.data.seq_length))
        assert row["tokens_per_s"] > 0 and row["tflops_per_device"] > 0
        assert row["mfu"] is None  # no known peak on CPU and none given
        assert set(row["decode"]) == {"1", "8"} and all(v > 0 for v in row["decode"].values())
        assert (out / "exports" / name / "config.json").is_file()
        assert not (out / "train" / name / "checkpoints").exists()
    assert rows["tiny-mod"]["flops_per_token"] < rows["tiny-dense"]["flops_per_token"]
