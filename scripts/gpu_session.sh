#!/usr/bin/env bash
# Everything issue 6 measures on a GPU, in one command (about 15 min on one H100), into one folder:
#   scripts/gpu_session.sh [OUT_DIR]        # default: $OUT (the device tool's folder), else bench_gpu/
# 1. the CUDA tests of the kernels and paths (no hydra/wandb needed: these files import the layers only);
# 2. whole models and layer shapes, train and inference, every conv type against static, with the
#    peers' implementation (--reference), the eager A2D2C pipeline (--eager-mix) and each DyConv path;
# 3. ResNet-18 again under torch.compile;
# 4. the input pipeline: GPU JPEG decode against the CPU DataLoader.
# Then copy the tables into docs/benchmarks.md with the device, torch version, date and command.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-bench_gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/device.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" | tee -a "$out/device.txt"

python -m pytest -q -m gpu tests/layers/test_layers_cuda.py tests/layers/kernels/test_per_sample_conv.py tests/layers/kernels/test_fused_mix.py \
    tests/layers/kernels/test_fused_evidence.py tests/data/test_gpu_decode.py 2>&1 | tail -n 40 | tee "$out/gpu_tests.txt"

python scripts/benchmark.py --models resnet18 mobilenetv2_x1_0 --layers --batch 256 --dtype bf16 \
    --channels-last --reference --eager-mix --paths aggregate unfold triton responses tune \
    --out "$out/eager" 2>&1 | tail -n 5
python scripts/benchmark.py --models resnet18 --batch 256 --dtype bf16 --channels-last --compile \
    --modes train --out "$out/compiled" 2>&1 | tail -n 5
python scripts/benchmark_data.py --images 4096 --workers 8 --batch 256 --out "$out/data" 2>&1 | tail -n 5
ls -R "$out"
