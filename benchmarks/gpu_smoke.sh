#!/usr/bin/env bash
# One GPU, every training path for a few steps: bf16 dense, MoD, MoE, staged and integrated
# MoDE (each with evaluation and saves), a save / --resume auto cycle compared loss for loss
# with an uninterrupted run, fp16 dense and MoD (dynamic loss scaling: the router BCE must
# fall as under bf16), convert, and `generate` on the device. One table on stdout
# (OUT/smoke.json): final loss, val loss, router BCE first -> last, tokens/s, peak
# torch.cuda.max_memory_allocated, and the resume comparison.
#
#   benchmarks/gpu_smoke.sh             one H100/H200, under 6 minutes
#   benchmarks/gpu_smoke.sh --cpu-tiny  the same runs with a tiny model on CPU (fp32 and bf16;
#                                       fp16 is skipped: DeepSpeed's CPU accelerator has none)
#
# Environment: OUT (default runs/gpu_smoke, replaced), PYTHON (default .venv/bin/python, else
# python3).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
case "${1:-}" in
  "") ;;
  --cpu-tiny) MODE=cpu-tiny ;;
  *) echo "usage: benchmarks/gpu_smoke.sh [--cpu-tiny]" >&2; exit 2 ;;
esac
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT=${OUT:-runs/gpu_smoke}
export PATH="$(dirname "$(command -v "$PYTHON")"):$PATH" MASTER_ADDR=127.0.0.1
unset RANK WORLD_SIZE LOCAL_RANK MASTER_PORT
CORPUS=modtrain/resources/tinyshakespeare.txt
if [[ $MODE == gpu ]]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else
    'benchmarks/gpu_smoke.sh: no CUDA device; run it with --cpu-tiny for the CPU check')"
  # GPT-2-small width at half depth, context 512: each run takes seconds after start-up.
  SHAPE=(model.num_layers=6 model.num_heads=8 model.hidden_size=512 data.seq_length=512
         model.max_seq_length=512 train.global_batch_size=16)
  PRECISIONS=(bf16 fp16)
  DEVICE=cuda
else
  SHAPE=(model.num_layers=2 model.num_heads=2 model.hidden_size=32 data.seq_length=32
         model.max_seq_length=32 train.global_batch_size=4 model.moe.min_capacity=2)
  PRECISIONS=(bf16)
  DEVICE=cpu
  export CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
STEPS=(train.steps=20 train.decay_steps=20 train.warmup_steps=4 train.log_interval=1
       train.eval_interval=10 train.eval_batches=2 train.save_interval=10 train.lr=1e-3)
modtrain() { "$PYTHON" -m modtrain "$@"; }
stage() { echo "== $(date +%T) $*" >&2; }
train() {  # NAME CONFIG OVERRIDES...
  local name=$1 config=$2; shift 2
  stage "train $name"
  modtrain train "$config" "run.dir=$OUT/train/$name" "data.store=$OUT/data.zarr" \
    "data.tokenizer=$OUT/char.model" run.tensorboard=false "${SHAPE[@]}" "${STEPS[@]}" "$@" \
    >"$OUT/train-$name.log" 2>&1 || { tail -20 "$OUT/train-$name.log" >&2; exit 1; }
}

rm -rf "$OUT" && mkdir -p "$OUT/train" "$OUT/exports"
if [[ $MODE == cpu-tiny ]]; then  # a tenth of the corpus: tokenizer and store in seconds
  head -c 100000 "$CORPUS" >"$OUT/corpus.txt" && CORPUS=$OUT/corpus.txt
fi
stage "tokenizer and store"
modtrain tokenizer train --input "$CORPUS" --out "$OUT/char" --type char >/dev/null
modtrain data prepare --tokenizer "$OUT/char.model" --input "$CORPUS" --out "$OUT/data.zarr" \
  --quiet >&2

for precision in "${PRECISIONS[@]}"; do
  train "dense-$precision" configs/shakespeare_dense.yaml "train.precision=$precision"
  train "mod-$precision" configs/shakespeare_mod.yaml "train.precision=$precision"
done
train moe-bf16 configs/shakespeare_moe.yaml train.precision=bf16
train mode-staged-bf16 configs/shakespeare_mode_staged.yaml train.precision=bf16
train mode-integrated-bf16 configs/shakespeare_mode_integrated.yaml train.precision=bf16
# The same dense run stopped at step 10 and resumed: losses 11-20 against dense-bf16's.
train resume-bf16 configs/shakespeare_dense.yaml train.precision=bf16 train.steps=10
train resume-bf16 configs/shakespeare_dense.yaml train.precision=bf16 --resume auto

for name in dense-bf16 mod-bf16; do
  stage "convert and generate $name"
  modtrain convert "$OUT/train/$name" --out "$OUT/exports/$name" --dtype bf16 >/dev/null
  modtrain generate "$OUT/exports/$name" --prompt "ROMEO:" --max-new-tokens 32 \
    --device "$DEVICE" --dtype bf16 >"$OUT/generate-$name.txt"
done
stage "summary ($MODE)"
"$PYTHON" benchmarks/gpu_smoke_report.py "$OUT" --resumed resume-bf16 --reference dense-bf16
