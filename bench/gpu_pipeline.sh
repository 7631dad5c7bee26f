#!/usr/bin/env bash
# The GPU figures of the pretraining pipeline in one pass, for one CUDA device (meant to fit in about
# 10 minutes on an H200): bench/pretrain_pipeline.py end to end from a store, model only, and the
# reference-style pipeline, each with MFU, in the config's precision (`auto`: bf16), for
#   MAE-tiny at batch 256 and at the largest batch that fits (--batch max), eager and compiled;
#   a ViT-base-sized MAE at batch 256 (eager, compiled) and at the largest batch that fits.
# Results: one .txt (the printed tables) and one .json per setting under $OUT (default
# bench_gpu_results/). PYTHON picks the interpreter (default python).
#
#   bash bench/gpu_pipeline.sh              # from the repository root, on the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
OUT=${OUT:-bench_gpu_results}
mkdir -p "$OUT"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device: this script measures a GPU')"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$OUT/gpu.txt" 2>&1 || true

# 16384 records of 5 s (2500 samples: the tiny experiment crops 2500): about 1 GB of float16
common=(--device cuda --records 16384 --length 2500 --warmup 3 --rounds 3)
run() {
  local name=$1
  shift
  echo "== $name: $*"
  "$PY" bench/pretrain_pipeline.py "${common[@]}" "$@" --out "$OUT/$name.json" | tee "$OUT/$name.txt"
}
run tiny_b256 --sizes tiny --batch 256 --steps-per-round 30
run tiny_b256_compiled --sizes tiny --batch 256 --steps-per-round 30 --set trainer.compile=true
run tiny_max --sizes tiny --batch max --steps-per-round 4
run tiny_max_compiled --sizes tiny --batch max --steps-per-round 4 --set trainer.compile=true
run base_b256 --sizes base --batch 256 --steps-per-round 10
run base_b256_compiled --sizes base --batch 256 --steps-per-round 10 --set trainer.compile=true
run base_max --sizes base --batch max --steps-per-round 3
echo "results in $OUT/"
