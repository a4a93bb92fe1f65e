#!/usr/bin/env bash
# Launch `modtrain train` on N local processes with DeepSpeed's launcher.
#   NPROC=2 launch/train_deepspeed.sh configs/shakespeare_mod.yaml [overrides...]
# On a machine without GPUs the processes use gloo (DS_ACCELERATOR=cpu).
set -euo pipefail
NPROC=${NPROC:-2}
MASTER_PORT=${MASTER_PORT:-29500}
if ! command -v nvidia-smi >/dev/null 2>&1; then export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}; fi
exec deepspeed --num_gpus "$NPROC" --master_addr "${MASTER_ADDR:-127.0.0.1}" \
  --master_port "$MASTER_PORT" --module modtrain train "$@"
