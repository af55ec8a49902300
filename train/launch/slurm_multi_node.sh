#!/usr/bin/env bash
# Train on several nodes under SLURM: srun starts one torchrun per node, and
# the torchruns meet at a c10d rendezvous on the job's first node.
#
#   sbatch --nodes=4 train/launch/slurm_multi_node.sh pretrain --recipe train/recipes/<recipe>.yaml --resume
#
# Everything after the script name goes to `python -m edgeast.cli`. The run
# folder must be on a file system every node sees (only rank 0 writes it; all
# ranks read the checkpoint when resuming). With --resume a requeued job
# continues from the last checkpoint. GPUS_PER_NODE defaults to SLURM's
# allocation; MASTER_PORT to 29500.
#SBATCH --job-name=edgeast
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/../..}"
PYTHON="${PYTHON:-python}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

GPUS_PER_NODE="${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')}}"
HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( ${SLURM_CPUS_PER_TASK:-$GPUS_PER_NODE} / GPUS_PER_NODE > 0 ? ${SLURM_CPUS_PER_TASK:-$GPUS_PER_NODE} / GPUS_PER_NODE : 1 ))}"

srun --kill-on-bad-exit=1 "$PYTHON" -m torch.distributed.run \
    --nnodes="$SLURM_NNODES" --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_backend=c10d --rdzv_endpoint="$HEAD_NODE:${MASTER_PORT:-29500}" --rdzv_id="$SLURM_JOB_ID" \
    -m edgeast.cli "$@"
