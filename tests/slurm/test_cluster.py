"""The test cluster itself: two nodes, srun, and the environment a job step sees."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_two_nodes_run_tasks(slurm):
    out = subprocess.run(["srun", "-N", "2", "-n", "2", "bash", "-c",
                          "echo $SLURM_PROCID:$SLURMD_NODENAME:$SLURM_STEP_ID"],
                         env=slurm.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == ["0:n1:0", "1:n2:0"]


@pytest.mark.parametrize("mpi", ["pmi2", "none"])
def test_prepare_under_a_mismatched_srun_mpi_is_refused(slurm, tmp_path, char_tokenizer, corpus,
                                                       mpi):
    # Open MPI 5 speaks PMIx only: under --mpi=pmi2 or none each task is a world of one.
    out = tmp_path / "s.zarr"
    proc = subprocess.run(["srun", "-n", "2", f"--mpi={mpi}", sys.executable, "-m", "modtrain",
                           "data", "prepare", "--tokenizer", str(char_tokenizer), "--input",
                           str(corpus), "--out", str(out), "--quiet"],
                          env=slurm.env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("modtrain: error: the launcher started 2 processes but MPI sees a "
                             "world of 1") == 2, proc.stderr[-2000:]
    assert not out.exists()
