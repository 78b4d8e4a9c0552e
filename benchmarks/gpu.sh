#!/usr/bin/env bash
# The GPU benchmark suite in one go (under 8 minutes on an H100-class GPU): AnimateDiff 16x512x512 at 50 steps,
# standard and IV-mixed, fp16, with and without --compile, peak memory with and without --offload model;
# ModelScope and VideoCrafter2 at their training sizes; UNet FLOPs, TFLOP/s and the fraction of the GPU's peak.
#
#   bash benchmarks/gpu.sh [RESULTS.md]          # default benchmarks/gpu-results.md, JSON beside it
#   bash benchmarks/gpu.sh --tiny [RESULTS.md]   # the same steps with the tiny models on the CPU (plumbing)
#
# Without a CUDA GPU it prints one line and exits 0. docs/BENCHMARKS.md explains the table.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/gpu_suite.py "$@"
