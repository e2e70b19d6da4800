#!/usr/bin/env bash
# DDP on every GPU of this machine (or of the current SLURM allocation's node) through torchrun.
#   scripts/launch_single_node.sh experiment=dyconv_imagenet_resnet18_dynamic dataset.root=/data/imagenet
#   NPROC=4 scripts/launch_single_node.sh ...        # only 4 processes (GPUs)
# Arguments are train.py's Hydra overrides. Without GPUs NPROC defaults to 1 (CPU, gloo).
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${NPROC:-}" ]]; then
  NPROC=$(python -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
# A fresh rendezvous store per restart (see a2d2c/distributed/process_group.py: restarts_share_a_stale_store).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
exec torchrun --standalone --nproc_per_node="$NPROC" train.py "$@"
