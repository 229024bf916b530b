#!/usr/bin/env bash
# AudioSet with the official SSAST recipe (patch model, 16x16 patches at stride 10, 1024 frames):
# batch 12, SpecAugment 48/192, mixup 0.5, no noise, step schedule (from epoch 10, x0.5 every 5
# epochs), binary cross-entropy, mAP, weight averaging, checkpoint ensemble in results.csv.
#   balanced: lr 5e-5, 25 epochs, uniform sampling, weight average of epochs 6..25;
#   full:     lr 1e-5, 5 epochs, balanced sampling (weights from label frequencies), weight
#             average of epochs 1..5 (AST's full-set setting: the run has 5 epochs).
#
#   finetune/audioset/run.sh balanced|full TRAIN_JSON EVAL_JSON OUT [INIT] [more ssast finetune options]
#
# TRAIN_JSON/EVAL_JSON: datafiles from `ssast prep audioset` (the official label CSV beside them,
# or --label-csv). As in the official recipe the evaluation set is also the validation set.
# INIT: default $SSAST_PRETRAINED_DIR/SSAST-Base-Patch-400.pth. NPROC=4 runs on 4 GPUs.
set -euo pipefail
if [ $# -lt 4 ]; then
  echo "usage: $0 balanced|full TRAIN_JSON EVAL_JSON OUT [INIT] [ssast finetune options]" >&2
  exit 2
fi
SET=$1 TRAIN=$2 EVAL=$3 OUT=$4
shift 4
INIT=${SSAST_PRETRAINED_DIR:-$HOME/.cache/ssast}/SSAST-Base-Patch-400.pth
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then INIT=$1; shift; fi
case $SET in
  balanced) SETTINGS=(--lr 5e-5 --epochs 25 --no-balanced-sampling --wa --wa-start 6 --wa-end 25) ;;
  full) SETTINGS=(--lr 1e-5 --epochs 5 --balanced-sampling --wa --wa-start 1 --wa-end 5) ;;
  *) echo "first argument: balanced or full, not $SET" >&2; exit 2 ;;
esac
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../_launch.sh"
ssast_finetune --train "$TRAIN" --valid "$EVAL" --out "$OUT" --init "$INIT" --resume \
  --preset audioset --fshape 16 --tshape 16 --fstride 10 --tstride 10 --task ft_avgtok \
  --freqm 48 --timem 192 --mixup 0.5 --no-noise \
  --batch-size "$(per_process 12)" --head-lr 1 --no-warmup \
  --lr-scheduler step --lr-scheduler-start 10 --lr-scheduler-step 5 --lr-decay 0.5 \
  --loss bce --metric mAP "${SETTINGS[@]}" "$@"
