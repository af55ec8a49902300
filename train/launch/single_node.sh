#!/usr/bin/env bash
# Train on all GPUs of one machine: torchrun starts one DDP process per GPU.
#
#   train/launch/single_node.sh pretrain --recipe train/recipes/<recipe>.yaml --set pretrain.engine.batch_size=24
#   NPROC=4 train/launch/single_node.sh train --recipe train/recipes/<recipe>.yaml
#
# Everything after the script name goes to `python -m edgeast.cli`. NPROC
# (default: the number of visible CUDA devices, at least 1) sets processes per
# node; engine.batch_size is per process, so the global batch is NPROC times it.
# Add --resume to continue from the run's last checkpoint.
set -euo pipefail

cd "$(dirname "$0")/../.."
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

NPROC="${NPROC:-$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')}"
# Share the CPU cores between the processes instead of oversubscribing them.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}"

exec "$PYTHON" -m torch.distributed.run --standalone --nnodes=1 --nproc_per_node="$NPROC" -m edgeast.cli "$@"
