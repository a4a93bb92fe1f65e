"""DeepSpeed ZeRO-1 on 2 gloo ranks reproduces the 1-process run at the same global batch."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import cli_env

# fp32 on CPU: the two layouts differ only in summation order (two half-batch means averaged
# by an all-reduce instead of one full-batch mean), a few ulp per step that Adam carries.
LOSS_TOLERANCE = 1e-4


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(tmp_path: Path, store: Path, tokenizer: Path, run: str, micro: int) -> Path:
    path = tmp_path / f"{run}.yaml"
    path.write_text(f"""
run: {{dir: {tmp_path / run}, seed: 11}}
data: {{store: {store}, tokenizer: {tokenizer}, seq_length: 32}}
model:
  num_layers: 2
  num_heads: 2
  hidden_size: 32
  max_seq_length: 32
  mod: {{enabled: true, capacity: 0.25}}
train: {{steps: 6, global_batch_size: 8, micro_batch_size: {micro}, warmup_steps: 2,
        eval_interval: 6, eval_batches: 2, log_interval: 1, save_interval: 100, zero_stage: 1}}
""")
    return path


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]


@pytest.mark.slow
def test_zero1_two_ranks_match_one_process(tmp_path, char_store, char_tokenizer):
    single = _config(tmp_path, char_store, char_tokenizer, "single", micro=8)
    subprocess.run([sys.executable, "-m", "modtrain", "train", str(single)], env=cli_env(),
                   check=True, capture_output=True, timeout=600)
    double = _config(tmp_path, char_store, char_tokenizer, "double", micro=4)
    launcher = Path(sys.executable).parent / "deepspeed"
    proc = subprocess.run(
        [str(launcher), "--num_gpus", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_port()), "--module", "modtrain", "train", str(double)],
        env=cli_env(), capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _losses(tmp_path / "single"), _losses(tmp_path / "double")
    assert len(a) == len(b) == 6
    diffs = [abs(x - y) for x, y in zip(a, b)]
    print(f"ZeRO-1, 2 ranks vs 1: max |loss diff| over {len(diffs)} steps = {max(diffs):.2e}")
    assert max(diffs) < LOSS_TOLERANCE, f"per-step loss differences {diffs}"
    assert (tmp_path / "double" / "checkpoints" / "latest").is_file()
