"""The micro-batch is derived from the process count unless set: the README's multi-process
command runs with the shipped configs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from modtrain.config import load_config
from modtrain.errors import ModtrainError
from modtrain.train.ds_config import deepspeed_config
from tests.conftest import cli_env
from tests.train.helpers import free_port, leftover_shm, step_losses

SHIPPED = ["configs/shakespeare_mod.yaml", "configs/shakespeare_dense.yaml"]


@pytest.mark.parametrize("path", SHIPPED)
@pytest.mark.parametrize("dp", [1, 2, 3, 4, 6, 12])
def test_shipped_configs_run_on_any_divisor_of_the_global_batch(path, dp):
    ds = deepspeed_config(load_config(path), dp)
    assert ds["train_batch_size"] == 12
    assert ds["train_micro_batch_size_per_gpu"] == 12 // dp
    assert ds["gradient_accumulation_steps"] == 1


def test_an_explicit_micro_batch_accumulates_gradients():
    ds = deepspeed_config(load_config(SHIPPED[0], ["train.micro_batch_size=3"]), 2)
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (3, 2)


@pytest.mark.parametrize("overrides,dp,message", [
    (["train.micro_batch_size=12"], 2, "12 x 2; set train.micro_batch_size=0"),
    ([], 5, "not divisible by the data-parallel size 5"),
    (["train.micro_batch_size=-1"], 1, "must be positive, or 0"),
])
def test_batch_sizes_that_cannot_work_are_one_line(overrides, dp, message):
    with pytest.raises(ModtrainError, match=message.replace("(", r"\(")):
        deepspeed_config(load_config(SHIPPED[0], overrides), dp)


@pytest.mark.slow
def test_readme_multi_process_command_runs(tmp_path, char_store, char_tokenizer):
    """`NPROC=2 launch/train_deepspeed.sh configs/shakespeare_mod.yaml`, as in the README,
    with the data, run directory and length pointed at the test's."""
    run_dir = tmp_path / "run"
    env = {**cli_env(), "NPROC": "2", "MASTER_PORT": str(free_port())}
    env["PATH"] = f"{os.path.dirname(sys.executable)}:{env['PATH']}"
    cmd = ["launch/train_deepspeed.sh", "configs/shakespeare_mod.yaml", f"run.dir={run_dir}",
           f"data.store={char_store}", f"data.tokenizer={char_tokenizer}", "train.steps=2",
           "train.log_interval=1", "train.eval_batches=1"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "done: 2 steps, world size 2 (deepspeed)" in proc.stdout
    assert sorted(step_losses(run_dir)) == [1, 2]
    assert not leftover_shm(["--master_port", env["MASTER_PORT"]])
