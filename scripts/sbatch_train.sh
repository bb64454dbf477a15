#!/bin/bash
# Multi-node DDP training on a SLURM cluster: one task per GPU, started by srun; Lightning reads each task's rank,
# the world size and the main node from SLURM (its SLURMEnvironment). Edit the lines marked EDIT, then submit from
# the project folder, with any train.py overrides after the script:
#   sbatch scripts/sbatch_train.sh experiment=cityscapes_unet data.root=/data/cityscapes
# All ranks write into one run directory, logs/train/runs/slurm-<job id>/ (segkit.cluster names it by the job id);
# rank 0 alone writes checkpoints, CSV/TensorBoard/W&B logs and result.json. This script's own output goes to
# slurm-<job id>.out in the submission folder.
#SBATCH --job-name=segkit
#SBATCH --partition=gpu              # EDIT: your GPU partition (`sinfo` lists them)
#SBATCH --nodes=2                    # EDIT: how many nodes
##SBATCH --nodelist=node[01-02]      # EDIT (optional): which nodes; remove one '#' to use it
#SBATCH --gpus-per-node=4            # EDIT: GPUs per node ...
#SBATCH --ntasks-per-node=4          # ... and the same number here: one task (one DDP process) per GPU
#SBATCH --cpus-per-task=8            # data-loading workers of one process + 1
##SBATCH --mem=0                     # optional: all the memory of each node (else the partition's default)
#SBATCH --time=24:00:00              # EDIT: wall-clock limit
# 90 s before the limit Lightning saves hpc_ckpt_<n>.ckpt into the run directory and requeues the job, which keeps
# its id, so the next start finds that run directory and continues from the checkpoint:
#SBATCH --signal=SIGUSR1@90
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"
PYTHON=${PYTHON:-.venv/bin/python}   # the project's environment (make install), on a filesystem every node sees
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
# export NCCL_SOCKET_IFNAME=ib0      # if NCCL picks the wrong network interface between nodes

srun --kill-on-bad-exit=1 "$PYTHON" src/train.py \
    trainer=ddp \
    trainer.num_nodes="${SLURM_JOB_NUM_NODES}" \
    trainer.devices="${SLURM_NTASKS_PER_NODE}" \
    "$@"
