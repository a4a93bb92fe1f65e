"""Process-group set-up: no start-up waits on a dead build, the device a rank takes, and the
collective timeout reaching torch and megatron-core."""

from __future__ import annotations

import subprocess
import sys

import pytest

from modtrain.errors import ModtrainError
from modtrain.parallel.distributed import device_index
from tests.conftest import cli_env

PROBE = """
import torch
from megatron.core import parallel_state as ps
from modtrain.parallel import init_distributed

init_distributed(timeout_minutes=7)
def minutes(group):
    return group._get_backend(torch.device("cpu")).options._timeout.total_seconds() / 60
print(minutes(torch.distributed.distributed_c10d._get_default_group()),
      minutes(ps.get_tensor_model_parallel_group()), minutes(ps.get_data_parallel_group()))
"""


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> tuple[subprocess.CompletedProcess, object]:
    """init_distributed in a fresh process whose extensions cache holds the `lock` a build
    killed mid-way leaves behind (torch's FileBaton waits on it forever)."""
    cache = tmp_path_factory.mktemp("torch_extensions")
    (cache / "deepspeed_shm_comm").mkdir()
    (cache / "deepspeed_shm_comm" / "lock").touch()
    env = {**cli_env(), "TORCH_EXTENSIONS_DIR": str(cache)}
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=180)
    return proc, cache


def test_a_stale_extension_build_lock_does_not_hang_start_up(probe):
    proc, cache = probe
    assert proc.returncode == 0, proc.stderr[-3000:]
    # gloo training uses no DeepSpeed comm op: nothing is built or loaded
    assert sorted(p.name for p in (cache / "deepspeed_shm_comm").iterdir()) == ["lock"]
    assert "deepspeed_shm_comm" not in proc.stdout + proc.stderr


def test_the_timeout_reaches_torch_and_megatron_groups(probe):
    proc, _ = probe
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["7.0", "7.0", "7.0"]


@pytest.mark.parametrize(("local_rank", "visible", "expected"),
                         [(0, 1, 0), (1, 1, 0), (3, 1, 0), (3, 4, 3), (5, 4, 1), (1, 2, 1)])
def test_a_rank_takes_its_local_rank_among_the_devices_it_sees(local_rank, visible, expected):
    # srun --gpus-per-task=1 shows each task one device: every rank's is device 0
    assert device_index(local_rank, visible) == expected


def test_no_visible_device_is_one_line():
    with pytest.raises(ModtrainError, match="sees no CUDA device"):
        device_index(0, 0)
