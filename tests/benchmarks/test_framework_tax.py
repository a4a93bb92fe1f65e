"""benchmarks/reference_gpt.py is modtrain's dense model, and framework_tax.py runs end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modtrain.config import load_config
from modtrain.model.param_table import parameter_count
from tests.conftest import cli_env

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from reference_gpt import ReferenceGPT, lr_at  # noqa: E402


@pytest.mark.parametrize("overrides", [[], ["model.hidden_size=512", "model.num_heads=8",
                                             "model.vocab_size=101", "model.vocab_multiple=8"]])
def test_reference_has_modtrain_parameter_count(overrides):
    config = load_config(ROOT / "configs" / "shakespeare_dense.yaml", overrides)
    m = config.model
    m.vocab_size = m.vocab_size or 65
    ref = ReferenceGPT(m.vocab_size, m.num_layers, m.hidden_size, m.num_heads, m.ffn_size,
                       config.data.seq_length, padded_vocab=m.padded_vocab_size)
    assert sum(p.numel() for p in ref.parameters()) == parameter_count(m)


def test_reference_schedule_is_modtrain_schedule():
    from modtrain.train.optim import lr_at as modtrain_lr_at

    t = load_config(ROOT / "configs" / "shakespeare_dense.yaml", ["train.steps=50",
                                                                  "train.warmup_steps=5"]).train
    for step in (0, 3, 5, 20, 49, 60):
        assert lr_at(step, t.lr, t.min_lr, t.warmup_steps, t.steps) == pytest.approx(
            modtrain_lr_at(step, t))


@pytest.mark.slow
def test_quick_run_end_to_end(tmp_path, char_store, char_tokenizer):
    results = tmp_path / "tax.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "framework_tax.py"), "--quick", "--store",
         str(char_store), "--tokenizer", str(char_tokenizer), "--json", str(results)],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = json.loads(results.read_text())["results"]
    assert (row["shape"], row["procs"], row["compile"], row["zero_stage"]) == ("tiny", 1, False, 1)
    assert row["reference_median"] > 0 and row["modtrain_median"] > 0
    assert row["ratio"] == pytest.approx(row["modtrain_median"] / row["reference_median"])
    assert "| tiny | 1 | off | 1 |" in proc.stdout


@pytest.mark.parametrize("mode", [[], ["--engine", "train.zero_stage=0"],
                                  ["--engine", "train.zero_stage=1"]],
                         ids=["bare", "engine-zero0", "engine-zero1"])
def test_model_step_compares_the_bare_models_and_the_whole_steps(mode):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "model_step.py"), "--steps", "2",
         "--warmup", "1", "model.num_layers=2", "model.hidden_size=32", "model.num_heads=2",
         "data.seq_length=16", "model.max_seq_length=16", "train.global_batch_size=2", *mode],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| modtrain GPT")
            or line.startswith("| reference GPT")]
    assert len(rows) == 2
    for row in rows:
        ms, ops = (cell.strip() for cell in row.strip("|").split("|")[1:])
        assert float(ms) > 0 and int(ops.replace(",", "")) > 0
    assert "reference / modtrain time:" in proc.stdout


def test_optimizer_step_times_every_adamw_implementation():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "optimizer_step.py"), "--steps", "2",
         "--warmup", "1", "model.num_layers=2", "model.hidden_size=32", "model.num_heads=2"],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split("|")[1].strip(): line for line in proc.stdout.splitlines()
            if line.startswith("| ") and "ms" not in line}
    assert set(rows) == {"per-parameter loop", "multi-tensor", "fused"}
    assert rows["per-parameter loop"].rstrip().endswith("| 1.00x |")


@pytest.mark.slow
def test_reference_runs_beside_idle_gloo_groups(tmp_path, char_store, char_tokenizer):
    out = tmp_path / "ref.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "reference_gpt.py"),
         str(ROOT / "configs" / "shakespeare_dense.yaml"), f"data.store={char_store}",
         f"data.tokenizer={char_tokenizer}", "model.num_layers=2", "model.hidden_size=32",
         "model.num_heads=2", "data.seq_length=16", "model.max_seq_length=16",
         "train.global_batch_size=4", "train.steps=4", "train.log_interval=2",
         "--idle-gloo-groups", "3", "--json", str(out)],
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())["records"]
    assert [r["step"] for r in records] == [2, 4] and all(r["tokens_per_s"] > 0 for r in records)
