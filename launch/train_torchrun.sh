#!/usr/bin/env bash
# Launch `modtrain train` with torchrun: NPROC processes on this node, or NNODES nodes that
# meet at RDZV_ENDPOINT (host:port; every node runs this script with the same endpoint).
#   NPROC=2 launch/train_torchrun.sh configs/shakespeare_mod.yaml [overrides...]
#   NNODES=2 NPROC=8 RDZV_ENDPOINT=node1:29400 RDZV_ID=myjob launch/train_torchrun.sh CONFIG
# Under Slurm, slurm/train.sbatch (LAUNCH=torchrun) starts one of these per node.
set -euo pipefail
NPROC=${NPROC:-2}
NNODES=${NNODES:-1}
if ! command -v nvidia-smi >/dev/null 2>&1; then export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}; fi
if [ "$NNODES" = 1 ] && [ -z "${RDZV_ENDPOINT:-}" ]; then
  rdzv=(--standalone)  # a local rendezvous on a free port
else
  rdzv=(--nnodes "$NNODES" --rdzv_backend c10d --rdzv_endpoint "$RDZV_ENDPOINT"
        --rdzv_id "${RDZV_ID:-modtrain}")
fi
exec "${PYTHON:-python3}" -m torch.distributed.run "${rdzv[@]}" --nproc_per_node "$NPROC" \
  --module modtrain train "$@"
