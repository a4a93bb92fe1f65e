"""`modtrain train` under each launcher, through the wrappers in launch/: srun, mpirun,
torchrun and deepspeed each give a world of 2 and the one-process loss at the same batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modtrain.checkpoint.tags import latest_tag, read_state
from tests.conftest import cli_env
from tests.train.helpers import single_command, step_losses, tiny_config
from tests.train.test_data_parallel_equivalence import LOSS_TOLERANCE

ROOT = Path(__file__).resolve().parents[2]
STEPS = 6


def launcher_env(**extra: str) -> dict[str, str]:
    env = cli_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update(PYTHON=sys.executable, NPROC="2", **extra)
    return env


def run_wrapper(script: str, config: Path, env: dict[str, str],
                *overrides: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(["bash", str(ROOT / "launch" / script), str(config),
                           f"train.steps={STEPS}", *overrides], env=env, capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def reference(tmp_path_factory, char_store, char_tokenizer) -> dict[int, float]:
    """The one-process run: global batch 8 in one micro-batch."""
    tmp = tmp_path_factory.mktemp("reference")
    cfg = tiny_config(tmp, char_store, char_tokenizer, "single", micro=8)
    proc = subprocess.run(single_command(cfg, f"train.steps={STEPS}"), env=cli_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world size 1 (single)" in proc.stdout
    return step_losses(tmp / "single")


def assert_two_ranks_match(run_dir: Path, stdout: str, launcher: str, reference) -> None:
    assert f"world size 2 ({launcher})" in stdout, stdout[-2000:]
    root = run_dir / "checkpoints"
    assert read_state(root, latest_tag(root)).layout.data == 2
    losses = step_losses(run_dir)
    assert sorted(losses) == sorted(reference) == list(range(1, STEPS + 1))
    diffs = [abs(losses[s] - reference[s]) for s in reference]
    print(f"{launcher}, 2 ranks vs 1: max |loss diff| over {STEPS} steps = {max(diffs):.2e}")
    assert max(diffs) < LOSS_TOLERANCE, diffs


@pytest.mark.slow
@pytest.mark.parametrize("script, launcher, zero, extra", [
    ("train_deepspeed.sh", "deepspeed", 1, {}),
    ("train_torchrun.sh", "torchrun", 2, {}),
    ("train_mpirun.sh", "openmpi", 3,
     {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}),
])
def test_local_launchers_train_two_ranks(tmp_path, char_store, char_tokenizer, reference,
                                         script, launcher, zero, extra):
    """Each wrapper, each with one of launch/ds_zero{1,2,3}.json."""
    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "double", micro=4)
    proc = run_wrapper(script, cfg, launcher_env(**extra), f"train.zero_stage={zero}",
                       f"train.deepspeed_config={ROOT / 'launch' / f'ds_zero{zero}.json'}")
    assert_two_ranks_match(tmp_path / "double", proc.stdout, launcher, reference)


@pytest.mark.slow
def test_srun_trains_two_ranks(slurm, tmp_path, char_store, char_tokenizer, reference):
    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "double", micro=4)
    env = slurm.env(launcher_env())
    env.pop("MASTER_ADDR")  # derived from the node's address, as on a cluster
    proc = run_wrapper("train_srun.sh", cfg, env)
    assert_two_ranks_match(tmp_path / "double", proc.stdout, "slurm", reference)


def test_srun_with_stale_world_size_fails_with_the_fix(slurm, tmp_path, char_store,
                                                       char_tokenizer):
    cfg = tiny_config(tmp_path, char_store, char_tokenizer, "stale")
    env = slurm.env(launcher_env(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_PORT="1"))
    proc = subprocess.run(["srun", "-n", "2", sys.executable, "-m", "modtrain", "train",
                           str(cfg)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "modtrain: error: srun started 2 tasks but WORLD_SIZE=1" in proc.stderr
    assert not (tmp_path / "stale" / "metrics.jsonl").exists()
