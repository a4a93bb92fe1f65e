"""Where this process sits in its launch: rank, local rank, world size and rendezvous address.

One reader for every launcher modtrain runs under: torchrun and the `deepspeed` launcher
(`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`), Slurm's `srun`
(`SLURM_PROCID`, `SLURM_LOCALID`, `SLURM_STEP_NUM_TASKS`, the first node of the step),
Open MPI's `mpirun` (`OMPI_COMM_WORLD_*`) and MPICH/Hydra or PMI (`PMI_RANK`, `PMI_SIZE`,
`MPI_LOCALRANKID`). A launch whose variables contradict each other (a process that would
silently train alone while the launcher started several) is a `ModtrainError` naming the fix.
"""

from __future__ import annotations

import os
import subprocess
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from modtrain.errors import ModtrainError

# Rendezvous ports derived from a job id fall in [PORT_BASE, PORT_BASE + PORT_SPAN).
PORT_BASE, PORT_SPAN = 20000, 20000
TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Launch:
    """This process's launch. `master_port` is None only for a one-process run (any free port)."""

    launcher: str  # single | torchrun | deepspeed | slurm | openmpi | mpich
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ModtrainError(f"{name}={value!r} is not an integer; unset it or fix the launcher "
                            "that set it") from None


def job_port(job_id: str | int) -> int:
    """A rendezvous port every task of one job derives alike (no coordination needed)."""
    key = str(job_id)
    number = int(key) if key.isdigit() else zlib.crc32(key.encode())
    return PORT_BASE + number % PORT_SPAN


def slurm_hostnames(nodelist: str) -> list[str]:
    """Expand a Slurm node list (`n[1-3],gpu7`) with `scontrol show hostnames`."""
    if not any(c in nodelist for c in "[],"):
        return [nodelist]
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ModtrainError(f"cannot expand the Slurm node list {nodelist!r} with 'scontrol show "
                            f"hostnames' ({e}); export MASTER_ADDR=<first node's address>"
                            ) from None
    return out.split()


def slurm_node_address(node: str) -> str:
    """The node's NodeAddr (what it is reached at), or its name when scontrol cannot tell."""
    try:
        out = subprocess.run(["scontrol", "show", "node", "-o", node], capture_output=True,
                             text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return node
    for field in out.split():
        if field.startswith("NodeAddr="):
            return field.split("=", 1)[1] or node
    return node


def _torch(env: Mapping[str, str]) -> Launch:
    missing = [v for v in TORCH_VARS if not env.get(v)]
    launcher = "torchrun" if "TORCHELASTIC_RUN_ID" in env else "deepspeed"
    if missing:
        raise ModtrainError(
            f"the environment sets {', '.join(v for v in TORCH_VARS if env.get(v))} but not "
            f"{', '.join(missing)}; launch with torchrun or deepspeed (which set all five), or "
            "unset them for srun/mpirun/one process")
    # all five are set (checked above): none of these is None
    rank, world, local = (int(env[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    slurm_tasks = _int(env, "SLURM_STEP_NUM_TASKS")
    if slurm_tasks is not None and world < slurm_tasks:
        raise ModtrainError(
            f"srun started {slurm_tasks} tasks but WORLD_SIZE={world} is set in their environment, "
            "so they would not train together; unset RANK/WORLD_SIZE/LOCAL_RANK before srun, or "
            "start one torchrun per node (srun --ntasks-per-node=1 torchrun ...)")
    return Launch(launcher, rank, local, world, env["MASTER_ADDR"], _int(env, "MASTER_PORT"))


def _mpi_rendezvous(env: Mapping[str, str], world: int, local_size: int | None,
                    what: str) -> tuple[str, int]:
    addr = env.get("MASTER_ADDR")
    if not addr:
        if local_size is not None and local_size < world:
            raise ModtrainError(
                f"{what} spans several hosts but MASTER_ADDR is not set; export MASTER_ADDR=<rank "
                "0's host> (and pass it on: mpirun -x MASTER_ADDR)")
        addr = "127.0.0.1"
    port = _int(env, "MASTER_PORT")
    if port is None:
        job = next((env[k] for k in ("SLURM_JOB_ID", "PMIX_NAMESPACE", "PMI_JOBID", "PMI_KVSNAME")
                    if env.get(k)), None)
        if job is None:
            raise ModtrainError(f"{what} gives no job id to derive a port from; export "
                                "MASTER_PORT=<free port> (and pass it on: mpirun -x MASTER_PORT)")
        port = job_port(job)
    return addr, port


def _check_against_slurm(env: Mapping[str, str], world: int, what: str) -> None:
    """Direct launch by srun with an MPI that does not speak its PMI gives singletons."""
    slurm_tasks = _int(env, "SLURM_STEP_NUM_TASKS")
    if slurm_tasks is not None and world < slurm_tasks:
        raise ModtrainError(
            f"srun started {slurm_tasks} tasks but {what} sees a world of {world}: srun's --mpi "
            "plugin does not match the MPI library (Open MPI: srun --mpi=pmix; MPICH: srun "
            "--mpi=pmi2), or drop MPI from the launch and let modtrain read SLURM_* itself")


def _openmpi(env: Mapping[str, str]) -> Launch:
    world, rank = _int(env, "OMPI_COMM_WORLD_SIZE"), _int(env, "OMPI_COMM_WORLD_RANK")
    local = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK")
    if rank is None or world is None:
        raise ModtrainError("OMPI_COMM_WORLD_SIZE or _RANK is missing; start with Open MPI's "
                            "mpirun, or unset the OMPI_COMM_WORLD_* variables")
    _check_against_slurm(env, world, "Open MPI")
    addr, port = _mpi_rendezvous(env, world, _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE"), "mpirun")
    return Launch("openmpi", rank, local if local is not None else 0, world, addr, port)


def _mpich(env: Mapping[str, str], hostnames: Callable[[str], list[str]],
           address: Callable[[str], str]) -> Launch:
    world, rank = _int(env, "PMI_SIZE"), _int(env, "PMI_RANK")
    if rank is None or world is None:
        raise ModtrainError("PMI_RANK or PMI_SIZE is missing; start with mpiexec (MPICH/Hydra) or "
                            "srun --mpi=pmi2, or unset the PMI_* variables")
    _check_against_slurm(env, world, "PMI")
    local = _int(env, "MPI_LOCALRANKID")
    if local is None:
        local = _int(env, "SLURM_LOCALID")
    local_size = _int(env, "MPI_LOCALNRANKS")
    if local is None and world > 1:
        raise ModtrainError("MPI_LOCALRANKID is not set, so the local rank is unknown; start with "
                            "MPICH's mpiexec (Hydra) or srun, or export LOCAL_RANK with torchrun")
    if "SLURM_JOB_ID" in env and not env.get("MASTER_ADDR"):
        return _slurm(env, hostnames, address, rank=rank, world=world, launcher="mpich")
    addr, port = _mpi_rendezvous(env, world, local_size, "mpiexec")
    return Launch("mpich", rank, local or 0, world, addr, port)


def _slurm(env: Mapping[str, str], hostnames: Callable[[str], list[str]],
           address: Callable[[str], str], rank: int | None = None, world: int | None = None,
           launcher: str = "slurm") -> Launch:
    if "SLURM_STEP_ID" not in env and "SLURM_STEPID" not in env:
        tasks = _int(env, "SLURM_NTASKS") or 1
        if tasks > 1:
            raise ModtrainError(
                f"this is the batch script of a {tasks}-task Slurm job, not one of its tasks; "
                "start training with srun (srun modtrain train ...), or see slurm/train.sbatch")
        return _single(env)
    rank = _int(env, "SLURM_PROCID") if rank is None else rank
    world = (_int(env, "SLURM_STEP_NUM_TASKS") or _int(env, "SLURM_NTASKS")) if world is None \
        else world
    local = _int(env, "SLURM_LOCALID") or 0
    if rank is None or world is None:
        raise ModtrainError("SLURM_PROCID or SLURM_NTASKS is missing in a Slurm step; start the "
                            "tasks with srun")
    addr = env.get("MASTER_ADDR")
    if not addr:
        nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
        if not nodelist:
            raise ModtrainError("SLURM_STEP_NODELIST is not set, so rank 0's host is unknown; "
                                "export MASTER_ADDR=<first node>")
        addr = address(hostnames(nodelist)[0])
    port = _int(env, "MASTER_PORT")
    if port is None:
        job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
        if not job:
            raise ModtrainError("SLURM_JOB_ID is not set; export MASTER_PORT=<free port>")
        port = job_port(job)
    return Launch(launcher, rank, local, world, addr, port)


def _single(env: Mapping[str, str]) -> Launch:
    return Launch("single", 0, 0, 1, env.get("MASTER_ADDR") or "127.0.0.1",
                  _int(env, "MASTER_PORT"))


def detect(env: Mapping[str, str] | None = None,
           hostnames: Callable[[str], list[str]] = slurm_hostnames,
           address: Callable[[str], str] = slurm_node_address) -> Launch:
    """Read the launch from `env` (default: os.environ). Precedence: torchrun/deepspeed
    variables (they also appear under `srun ... torchrun`), then mpirun's (Open MPI, then
    PMI), then Slurm's; no launcher at all is a one-process run."""
    env = os.environ if env is None else env
    if any(env.get(v) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        launch = _torch(env)
    elif "OMPI_COMM_WORLD_SIZE" in env or "OMPI_COMM_WORLD_RANK" in env:
        launch = _openmpi(env)
    elif "PMI_SIZE" in env or "PMI_RANK" in env:
        launch = _mpich(env, hostnames, address)
    elif "SLURM_PROCID" in env or "SLURM_JOB_ID" in env:
        launch = _slurm(env, hostnames, address)
    else:
        launch = _single(env)
    if not 0 <= launch.rank < launch.world_size:
        raise ModtrainError(f"{launch.launcher} gives rank {launch.rank} in a world of "
                            f"{launch.world_size}; the launcher's variables are inconsistent")
    return launch


def export(launch: Launch, environ: dict[str, str] | os._Environ = os.environ) -> None:
    """Write the launch as torch's env:// variables (what torch/DeepSpeed rendezvous reads)."""
    environ.update(RANK=str(launch.rank), WORLD_SIZE=str(launch.world_size),
                   LOCAL_RANK=str(launch.local_rank), MASTER_ADDR=launch.master_addr)
    if launch.master_port is not None:
        environ["MASTER_PORT"] = str(launch.master_port)


# Variables that announce how many processes a launcher started, for MPI programs.
MPI_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE",
                 "SLURM_STEP_NUM_TASKS")


def announced_world_size(env: Mapping[str, str] | None = None) -> int:
    """How many processes mpirun/mpiexec/srun says it started (1 when none is seen). An MPI
    program must then see that many ranks (`check_mpi_size`)."""
    env = os.environ if env is None else env
    for var in MPI_SIZE_VARS:
        value = _int(env, var)
        if value is not None:
            return value
    return 1


def check_mpi_size(expected: int, mpi_size: int) -> None:
    """The world MPI reports must be the one the launcher started (else: singletons)."""
    if mpi_size != expected:
        raise ModtrainError(
            f"the launcher started {expected} processes but MPI sees a world of {mpi_size}: "
            "the launcher and the MPI library do not match (with Open MPI under Slurm use "
            "'srun --mpi=pmix'; or use the mpirun of the MPI mpi4py loads)")
