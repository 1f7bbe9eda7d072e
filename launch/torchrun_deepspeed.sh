#!/usr/bin/env bash
# Multi-process DeepSpeed without accelerate's launcher (works on CPU with gloo too):
#   NPROC=2 launch/torchrun_deepspeed.sh CONFIG.yaml deepspeed=configs/deepspeed/zero2.json
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
config="${1:?usage: launch/torchrun_deepspeed.sh CONFIG.yaml [key=value ...]}"
shift
python="${PYTHON:-$here/.venv/bin/python}"
exec "$python" -m torch.distributed.run --standalone --nproc_per_node "${NPROC:-2}" \
    -m ernie_style pretrain --config "$config" "$@"
