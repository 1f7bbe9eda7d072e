#!/usr/bin/env bash
# Launch `ernie-style pretrain` through accelerate.
#
#   launch/pretrain.sh CONFIG.yaml [key=value ...] [--resume auto]        # one process (CPU/GPU)
#   ACCEL=configs/accelerate/multi_gpu.yaml NPROC=8 launch/pretrain.sh ...  # DDP on one machine
#   ACCEL=configs/accelerate/deepspeed_zero2.yaml NPROC=8 launch/pretrain.sh ...
#   ACCEL=configs/accelerate/cpu_ddp.yaml NPROC=2 launch/pretrain.sh ...    # 2 CPU processes
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
config="${1:?usage: launch/pretrain.sh CONFIG.yaml [key=value ...] [--resume auto|PATH]}"
shift
accel="${ACCEL:-$here/configs/accelerate/cpu.yaml}"
nproc="${NPROC:-1}"
python="${PYTHON:-$here/.venv/bin/python}"
exec "$python" -m accelerate.commands.launch --config_file "$accel" --num_processes "$nproc" \
    -m ernie_style pretrain --config "$config" "$@"
