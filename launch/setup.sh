#!/usr/bin/env bash
# Create .venv and install modtrain with its test tools. Idempotent; needs only Python >= 3.11.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if ! command -v nvidia-smi >/dev/null 2>&1; then
  # CPU machine: pin the CPU torch build first, or pip resolves a multi-GB CUDA build.
  .venv/bin/pip install -q "torch==2.13.0"
fi
.venv/bin/pip install -q -e '.[test]'
