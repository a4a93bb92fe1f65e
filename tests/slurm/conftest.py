"""The `slurm` fixture: one real single-host cluster (2 simulated nodes) for the session.

Skipped when the Slurm binaries are absent, except under CI (`CI` set), where that is a
failure: `.ci/run` installs them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.slurm.cluster import LocalSlurm, missing_binaries


@pytest.fixture(scope="session")
def slurm():
    missing = missing_binaries()
    if missing:
        reason = (f"Slurm is not installed (missing {', '.join(missing)}); apt-get install "
                  "slurmctld slurmd slurm-client munge libpmix-dev")
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}")
        pytest.skip(reason)
    # Not under pytest's 0700 temp dirs: munged wants every directory above its socket
    # world-executable; a short path also stays below the 108-byte unix socket limit.
    root = Path(tempfile.mkdtemp(prefix="modtrain-slurm-"))
    cluster = LocalSlurm(root, nodes=2)
    try:
        cluster.start()
        print(f"\nSlurm cluster up in {cluster.start_seconds:.2f} s ({root})")
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
