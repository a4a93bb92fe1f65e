#!/usr/bin/env bash
# Launch `modtrain train` as NPROC Slurm tasks (one per GPU): inside an allocation (sbatch,
# salloc) or on its own. modtrain reads SLURM_PROCID/SLURM_LOCALID/SLURM_STEP_NUM_TASKS and
# derives the rendezvous from the first node and the job id; no MPI is involved.
#   NPROC=2 launch/train_srun.sh configs/shakespeare_mod.yaml [overrides...]
#   SRUN_ARGS="-N 2 --ntasks-per-node=4 --gpus-per-task=1" launch/train_srun.sh CONFIG
set -euo pipefail
if ! command -v nvidia-smi >/dev/null 2>&1; then export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}; fi
read -r -a extra <<< "${SRUN_ARGS:-}"
exec srun --ntasks "${NPROC:-2}" --kill-on-bad-exit=1 "${extra[@]}" \
  "${PYTHON:-python3}" -m modtrain train "$@"
