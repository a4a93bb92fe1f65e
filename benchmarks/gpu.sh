#!/usr/bin/env bash
# bf16 training tokens/s and MFU of dense and MoD models of GPT-2 small and medium shape
# (12 x 768 and 24 x 1024, context 1024) on one GPU, through `modtrain train`, and greedy
# decode tokens/s of their exports at batch 1 and 8. Offline: the data is the embedded
# tinyshakespeare, tokenized with a BPE trained here. One table on stdout, OUT/summary.json.
#
#   benchmarks/gpu.sh             one H100/H200, under 8 minutes
#   benchmarks/gpu.sh --cpu-tiny  the same steps with tiny models on CPU (about a minute)
#
# Environment: OUT (default runs/gpu_bench, replaced), PYTHON (default .venv/bin/python,
# else python3), PEAK_TFLOPS (the device's dense bf16 peak for MFU; default: modtrain's
# table, 989 for H100/H200), GPU_BENCH_SIZES (the models, "name:layers:heads:width ...").
# MoD: capacity 0.125 on every other block, the default.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
case "${1:-}" in
  "") ;;
  --cpu-tiny) MODE=cpu-tiny ;;
  *) echo "usage: benchmarks/gpu.sh [--cpu-tiny]" >&2; exit 2 ;;
esac
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT=${OUT:-runs/gpu_bench}
# The interpreter's tools first (one ninja for DeepSpeed's ops); a single local process.
export PATH="$(dirname "$(command -v "$PYTHON")"):$PATH" MASTER_ADDR=127.0.0.1
unset RANK WORLD_SIZE LOCAL_RANK MASTER_PORT
CORPUS=modtrain/resources/tinyshakespeare.txt
# name:layers:heads:width
if [[ $MODE == gpu ]]; then
  SIZES=${GPU_BENCH_SIZES:-small:12:12:768 medium:24:16:1024}
  VOCAB=4096
  TRAIN=(train.precision=bf16)
  DECODE=(--device cuda --dtype bf16 --new-tokens 256 --repeats 3)
  EXPORT_DTYPE=bf16
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else
    'benchmarks/gpu.sh: no CUDA device; run benchmarks/gpu.sh --cpu-tiny for the CPU check')"
else
  SIZES=${GPU_BENCH_SIZES:-tiny1:2:2:32 tiny2:2:2:64}
  VOCAB=512
  TRAIN=(train.precision=fp32 data.seq_length=64 model.max_seq_length=64
         train.global_batch_size=4 train.steps=6 train.log_interval=2 train.warmup_steps=2)
  DECODE=(--device cpu --dtype fp32 --new-tokens 8 --repeats 1)
  EXPORT_DTYPE=fp32
  export CUDA_VISIBLE_DEVICES="" DS_ACCELERATOR=cpu OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
[[ -n "${PEAK_TFLOPS:-}" ]] && TRAIN+=("train.peak_tflops=$PEAK_TFLOPS")
modtrain() { "$PYTHON" -m modtrain "$@"; }
stage() { echo "== $(date +%T) $*" >&2; }

rm -rf "$OUT" && mkdir -p "$OUT/train" "$OUT/exports"
if [[ $MODE == cpu-tiny ]]; then  # a fifth of the corpus: tokenizer and store in seconds
  head -c 200000 "$CORPUS" >"$OUT/corpus.txt" && CORPUS=$OUT/corpus.txt
fi
stage "tokenizer: BPE, vocabulary $VOCAB"
modtrain tokenizer train --input "$CORPUS" --out "$OUT/bpe" --type bpe --vocab-size "$VOCAB" \
  >/dev/null 2>"$OUT/tokenizer.log" || { tail -20 "$OUT/tokenizer.log" >&2; exit 1; }
stage "token store"
modtrain data prepare --tokenizer "$OUT/bpe.model" --input "$CORPUS" --out "$OUT/data.zarr" \
  --quiet >&2

EXPORTS=()
for size in $SIZES; do
  IFS=: read -r name layers heads width <<<"$size"
  for variant in dense mod; do
    run="$name-$variant"
    stage "train $run"
    mod=false; [[ $variant == mod ]] && mod=true
    modtrain train benchmarks/configs/gpu_bench.yaml "run.dir=$OUT/train/$run" \
      "data.store=$OUT/data.zarr" "data.tokenizer=$OUT/bpe.model" \
      "model.num_layers=$layers" "model.num_heads=$heads" "model.hidden_size=$width" \
      "model.mod.enabled=$mod" "${TRAIN[@]}" >"$OUT/train-$run.log" 2>&1 \
      || { tail -20 "$OUT/train-$run.log" >&2; exit 1; }
    tail -1 "$OUT/train-$run.log" >&2
    stage "convert $run"
    modtrain convert "$OUT/train/$run" --out "$OUT/exports/$run" --dtype "$EXPORT_DTYPE" \
      >/dev/null 2>"$OUT/convert-$run.log" || { tail -20 "$OUT/convert-$run.log" >&2; exit 1; }
    rm -rf "$OUT/train/$run/checkpoints"  # optimizer states: gigabytes at 350M, not needed
    EXPORTS+=("$OUT/exports/$run")
  done
done
stage "decode, batch 1 and 8"
"$PYTHON" benchmarks/gpu_decode.py "${EXPORTS[@]}" "${DECODE[@]}" --batches 1 8 \
  --json "$OUT/decode.json" >&2
stage "summary ($MODE)"
"$PYTHON" benchmarks/gpu_report.py "$OUT"
echo "JSON: $OUT/summary.json" >&2
