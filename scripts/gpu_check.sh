#!/usr/bin/env bash
# GPU acceptance (docs/benchmarks.md): the CUDA tests, then DyConv, A2D2C and A2D2C+ training
# throughput and peak memory against static, each beside its target; exit 0 only when all hold.
#   scripts/gpu_check.sh [OUT_DIR] [--smoke]     # default OUT_DIR: $OUT (the device tool's folder), else gpu_check/
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_check}}
shift || true
exec python scripts/gpu_check.py --out "$out" "$@"
