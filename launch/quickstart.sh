#!/usr/bin/env bash
# The default job on a laptop-class CPU: tokenizer -> zarr store -> MoD training through
# megatron-core + DeepSpeed -> checkpoint -> export -> sampled text. Extra arguments are
# config overrides for the training step, e.g. train.steps=200.
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
CORPUS=modtrain/resources/tinyshakespeare.txt
CONFIG=${CONFIG:-configs/shakespeare_mod.yaml}
RUN=$(python -c "import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))['run']['dir'])" "$CONFIG")
modtrain tokenizer train --input "$CORPUS" --out data/shakespeare_char --type char
modtrain data prepare --tokenizer data/shakespeare_char.model --input "$CORPUS" \
  --out data/shakespeare_char.zarr --overwrite
# A rerun starts afresh: the earlier run is moved aside to RUN_DIR.old-<time>, not deleted.
modtrain train "$CONFIG" --overwrite "$@"
modtrain convert "$RUN" --out "exports/$(basename "$RUN")"
modtrain generate "exports/$(basename "$RUN")" --prompt "ROMEO:" --max-new-tokens 300
