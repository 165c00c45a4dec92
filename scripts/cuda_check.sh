#!/usr/bin/env bash
# The one command to run on a CUDA GPU machine: proves a CUDA training step matches our CPU
# trainer. Builds the library tests with `--features cuda` (CUDA toolkit from
# scripts/build-cuda.sh's pip prefix unless CUDA_HOME already points at one) and runs the
# candle equivalence tests on device cuda:0: loss and every gradient of one micro-batch equal
# the CPU trainer's (relative 1e-4) for LoRA on all 7 linears (F32 and Q8_0 base, dropout),
# full fine-tuning (tied and untied head), and whole 3-step `train()` runs (same losses,
# gradient norms and eval losses per step as `--device cpu`).
#
#   scripts/cuda_check.sh                  # device cuda:0
#   ALPACA_CANDLE_TEST_DEVICE=cuda:1 scripts/cuda_check.sh
#
# Exit code 0 and "test result: ok" for every suite means the GPU step matches.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L; then
  echo "cuda_check: no NVIDIA GPU visible (nvidia-smi)" >&2
  exit 1
fi
if [[ -z "${CUDA_HOME:-}" ]]; then
  if [[ -z "${CUDA_COMPUTE_CAP:-}" ]]; then
    # e.g. "9.0" -> 90
    CUDA_COMPUTE_CAP="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')"
    export CUDA_COMPUTE_CAP
  fi
  eval "$(scripts/build-cuda.sh env)"
fi
export ALPACA_CANDLE_TEST_DEVICE="${ALPACA_CANDLE_TEST_DEVICE:-cuda:0}"
echo "cuda_check: device $ALPACA_CANDLE_TEST_DEVICE, compute cap ${CUDA_COMPUTE_CAP:-?}" >&2
cargo test --release -j "${CUDA_BUILD_JOBS:-$(nproc)}" -p alpaca --features cuda --lib candle \
  -- --test-threads 1
