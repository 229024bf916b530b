#!/usr/bin/env bash
#SBATCH --job-name=ssast-pretrain
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --time=48:00:00
#SBATCH --output=slurm-%j.out
#SBATCH --requeue
#
# Multi-node pretraining under SLURM: the SSAST-Patch-Base-400 recipe on every GPU of the
# allocation, one process per GPU. Submit with
#
#   sbatch pretrain/slurm_multinode.sh DATA VALID OUTDIR [more ssast pretrain options]
#
# from the repository root (SLURM runs a copy of this script, so the DeepSpeed configs are found
# from the submission folder). A requeued or resubmitted job resumes from the newest complete
# checkpoint in OUTDIR (--resume).
# OUTDIR must be on a file system every node sees. Two ways to start the processes:
#   LAUNCHER=torchrun (default): srun starts one torchrun per node; torchrun's c10d rendezvous
#     on the first node joins them and starts one process per GPU.
#   LAUNCHER=deepspeed: the deepspeed launcher on the first node reads a hostfile ("host
#     slots=N" per node, written below from the allocation) and starts the processes on every
#     node over pdsh (passwordless ssh between the nodes, and pdsh, needed).
# GLOBAL_BATCH is split over all GPUs; the official recipe used 24 clips per step, which with 16
# GPUs leaves less than 2 per GPU: set it to a multiple of the GPU count (and scale --lr with care).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: sbatch $0 DATA VALID OUTDIR [ssast pretrain options]" >&2
  exit 2
fi
DATA=$1 VALID=$2 OUT=$3
shift 3
HERE=${SLURM_SUBMIT_DIR:-$(pwd)}/pretrain
PYTHON=${PYTHON:-python}
NNODES=${SLURM_JOB_NUM_NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}
WORLD=$((NNODES * GPUS_PER_NODE))
GLOBAL_BATCH=${GLOBAL_BATCH:-$((WORLD * 6))}
if [ $((GLOBAL_BATCH % WORLD)) -ne 0 ]; then
  echo "GLOBAL_BATCH=$GLOBAL_BATCH is not divisible by the $WORLD GPUs" >&2
  exit 2
fi
CLIPS=${CLIPS:-2281241}
EPOCHS=${EPOCHS:-10}
MAX_STEPS=${MAX_STEPS:-$((EPOCHS * CLIPS / GLOBAL_BATCH))}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-29500}
ARGS=(pretrain --train "$DATA" --valid "$VALID" --out "$OUT" --resume
      --model-size base --fshape 16 --tshape 16 --target-length 1024 --mask-patch 400
      --objective joint --mpg-weight 10 --lr 1e-4 --warmup-steps 1000 --lr-patience 2
      --valid-every 4000 --save-every 4000 --batch-size $((GLOBAL_BATCH / WORLD)) --max-steps "$MAX_STEPS"
      --deepspeed-config "${DS_CONFIG:-$HERE/ds_config_zero2_bf16.json}" "$@")
echo "ssast pretrain: $NNODES node(s) x $GPUS_PER_NODE GPU(s), $GLOBAL_BATCH clips per step, $MAX_STEPS steps"

case ${LAUNCHER:-torchrun} in
  torchrun)
    srun --kill-on-bad-exit=1 "$PYTHON" -m torch.distributed.run \
      --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" \
      --rdzv_id "$SLURM_JOB_ID" --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
      -m ssast.cli "${ARGS[@]}"
    ;;
  deepspeed)
    HOSTFILE=$OUT/hostfile
    mkdir -p "$OUT"
    scontrol show hostnames "$SLURM_JOB_NODELIST" | sed "s/\$/ slots=$GPUS_PER_NODE/" > "$HOSTFILE"
    # --no_local_rank: ssast reads LOCAL_RANK from the environment, as under torchrun.
    deepspeed --hostfile "$HOSTFILE" --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
      --no_local_rank --module ssast.cli "${ARGS[@]}"
    ;;
  *)
    echo "LAUNCHER must be torchrun or deepspeed" >&2
    exit 2
    ;;
esac
