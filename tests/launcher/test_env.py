"""The launcher environment: each launcher's variables, and launches that contradict themselves."""

from __future__ import annotations

import pytest

from modtrain import launcher
from modtrain.errors import ModtrainError
from modtrain.launcher import (
    Launch,
    announced_world_size,
    check_mpi_size,
    detect,
    export,
    job_port,
)


def _detect(env: dict[str, str]) -> Launch:
    def hostnames(nodelist: str) -> list[str]:
        assert nodelist == "gpu[07-08]"
        return ["gpu07", "gpu08"]

    return detect(env, hostnames=hostnames, address=lambda node: f"10.0.0.{node[-1]}")


SRUN = {"SLURM_JOB_ID": "4242", "SLURM_STEP_ID": "0", "SLURM_PROCID": "3", "SLURM_LOCALID": "1",
        "SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "gpu[07-08]",
        "SLURM_JOB_NODELIST": "gpu[07-08]"}


def test_no_launcher_is_one_process():
    assert detect({}) == Launch("single", 0, 0, 1, "127.0.0.1", None)
    assert detect({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1234"}).master_port == 1234


@pytest.mark.parametrize("extra, name", [({"TORCHELASTIC_RUN_ID": "x"}, "torchrun"),
                                         ({"CROSS_RANK": "0"}, "deepspeed")])
def test_torchrun_and_deepspeed(extra, name):
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h0",
           "MASTER_PORT": "29500", **extra}
    assert detect(env) == Launch(name, 1, 1, 2, "h0", 29500)


def test_torchrun_started_by_srun_one_per_node():
    # srun --ntasks-per-node=1 torchrun --nproc_per_node=2: the torch variables win.
    env = {**SRUN, "SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "1", "TORCHELASTIC_RUN_ID": "9",
           "RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu07",
           "MASTER_PORT": "25000"}
    assert detect(env) == Launch("torchrun", 3, 1, 4, "gpu07", 25000)


def test_srun_reads_slurm_and_derives_the_rendezvous():
    launch = _detect(SRUN)
    assert launch == Launch("slurm", 3, 1, 4, "10.0.0.7", job_port(4242))
    assert launch.master_port == 20000 + 4242
    # MASTER_ADDR/PORT exported by the batch script take precedence.
    launch = _detect({**SRUN, "MASTER_ADDR": "a", "MASTER_PORT": "1"})
    assert (launch.master_addr, launch.master_port) == ("a", 1)


def test_a_single_node_list_needs_no_scontrol():
    env = {**SRUN, "SLURM_STEP_NODELIST": "vm", "SLURM_JOB_NODELIST": "vm"}
    launch = detect(env, hostnames=launcher.slurm_hostnames, address=lambda node: node)
    assert launch.master_addr == "vm"


def test_openmpi_on_one_host_and_on_several():
    env = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2",
           "OMPI_COMM_WORLD_LOCAL_RANK": "1", "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
           "PMIX_NAMESPACE": "prterun-vm-1234@1"}
    launch = detect(env)
    assert (launch.launcher, launch.rank, launch.local_rank, launch.world_size,
            launch.master_addr) == ("openmpi", 1, 1, 2, "127.0.0.1")
    assert launch.master_port == job_port("prterun-vm-1234@1")  # the same on every rank
    with pytest.raises(ModtrainError, match="export MASTER_ADDR"):
        detect({**env, "OMPI_COMM_WORLD_LOCAL_SIZE": "1"})
    assert detect({**env, "OMPI_COMM_WORLD_LOCAL_SIZE": "1", "MASTER_ADDR": "h0"}).master_addr \
        == "h0"
    with pytest.raises(ModtrainError, match="export MASTER_PORT"):
        detect({k: v for k, v in env.items() if k != "PMIX_NAMESPACE"})


def test_mpich_hydra_and_srun_pmi2():
    env = {"PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0", "MPI_LOCALNRANKS": "2",
           "PMI_JOBID": "kvs_77"}
    assert detect(env) == Launch("mpich", 0, 0, 2, "127.0.0.1", job_port("kvs_77"))
    # srun --mpi=pmi2 sets PMI_RANK/PMI_SIZE next to SLURM_*: the address comes from Slurm.
    pmi2 = {**SRUN, "PMI_RANK": "3", "PMI_SIZE": "4"}
    assert _detect(pmi2) == Launch("mpich", 3, 1, 4, "10.0.0.7", job_port(4242))


def test_srun_with_a_mismatched_mpi_is_an_error():
    # Open MPI initialised as a singleton under srun --mpi=pmi2 / --mpi=none.
    env = {**SRUN, "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "1"}
    with pytest.raises(ModtrainError, match=r"srun started 4 tasks .* world of 1.*--mpi=pmix"):
        detect(env)
    with pytest.raises(ModtrainError, match="srun started 4 tasks"):
        detect({**SRUN, "PMI_RANK": "0", "PMI_SIZE": "1"})


def test_stale_torch_variables_under_srun_are_an_error():
    env = {**SRUN, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "x",
           "MASTER_PORT": "1"}
    with pytest.raises(ModtrainError, match="srun started 4 tasks but WORLD_SIZE=1"):
        detect(env)


def test_partial_or_inconsistent_variables_are_errors():
    with pytest.raises(ModtrainError, match="but not .*MASTER_ADDR"):
        detect({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_PORT": "1"})
    with pytest.raises(ModtrainError, match="rank 2 in a world of 2"):
        detect({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "x",
                "MASTER_PORT": "1"})
    with pytest.raises(ModtrainError, match="not an integer"):
        detect({"OMPI_COMM_WORLD_RANK": "zero", "OMPI_COMM_WORLD_SIZE": "2"})


def test_the_batch_script_of_a_multi_task_job_is_not_a_task():
    batch = {"SLURM_JOB_ID": "5", "SLURM_NTASKS": "2", "SLURM_PROCID": "0",
             "SLURM_JOB_NODELIST": "vm"}
    with pytest.raises(ModtrainError, match="start training with srun"):
        detect(batch)
    assert detect({**batch, "SLURM_NTASKS": "1"}).world_size == 1


def test_export_writes_torch_env_and_mpi_size_is_checked():
    env: dict[str, str] = {}
    export(Launch("slurm", 1, 0, 2, "h", 20005), env)
    assert env == {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "h",
                   "MASTER_PORT": "20005"}
    assert detect({**SRUN, "SLURM_STEP_NUM_TASKS": "2", **env}) == Launch(
        "deepspeed", 1, 0, 2, "h", 20005)  # re-reading the exported launch keeps it


def test_mpi_programs_check_the_announced_size():
    assert announced_world_size({}) == 1
    assert announced_world_size(SRUN) == 4
    assert announced_world_size({"OMPI_COMM_WORLD_SIZE": "2", **SRUN}) == 2
    check_mpi_size(2, 2)
    with pytest.raises(ModtrainError, match="started 2 processes but MPI sees a world of 1"):
        check_mpi_size(2, 1)
