"""Tiny training configs and launchers shared by the multi-process training tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import cli_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_config(tmp_path: Path, store: Path, tokenizer: Path, run: str, micro: int = 8,
                steps: int = 6, extra: str = "") -> Path:
    """A 2-layer MoD model that trains a step in well under a second on CPU."""
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
train: {{steps: {steps}, global_batch_size: 8, micro_batch_size: {micro}, warmup_steps: 2,
        eval_interval: 1000, eval_batches: 2, log_interval: 1, save_interval: 1000,
        zero_stage: 1{extra}}}
""")
    return path


def single_command(config: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "modtrain", "train", str(config), *overrides]


def deepspeed_launcher(nproc: int = 2) -> list[str]:
    """The `deepspeed` launcher on loopback with a free port; a module and its args follow."""
    return [str(Path(sys.executable).parent / "deepspeed"), "--num_gpus", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port())]


def deepspeed_command(config: Path, *overrides: str, nproc: int = 2) -> list[str]:
    return [*deepspeed_launcher(nproc), "--module", "modtrain", "train", str(config),
            *overrides]


def leftover_shm(cmd: list[str]) -> list[Path]:
    """DeepSpeed CPU all-reduce segments a launch left in /dev/shm (none: no shm op loads)."""
    if "--master_port" not in cmd:
        return []
    port = cmd[cmd.index("--master_port") + 1]
    return sorted(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_127.0.0.1_{port}_*"))


def run(cmd: list[str], expect: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == expect, proc.stderr[-4000:]
    assert not leftover_shm(cmd), "a launch left DeepSpeed shared memory behind"
    return proc


def step_losses(run_dir: Path) -> dict[int, float]:
    """Loss per step; a step logged twice (re-run after a resume) keeps its last value."""
    out = {}
    text = (run_dir / "metrics.jsonl").read_text()
    for line in text[: text.rfind("\n") + 1].splitlines():  # not a line still being written
        record = json.loads(line)
        if "loss" in record:
            out[record["step"]] = record["loss"]
    return out
