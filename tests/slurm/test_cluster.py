"""The test cluster itself: two nodes, srun, and the environment a job step sees."""

from __future__ import annotations

import subprocess


def test_two_nodes_run_tasks(slurm):
    out = subprocess.run(["srun", "-N", "2", "-n", "2", "bash", "-c",
                          "echo $SLURM_PROCID:$SLURMD_NODENAME:$SLURM_STEP_ID"],
                         env=slurm.env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(out.stdout.split()) == ["0:n1:0", "1:n2:0"]
