#!/usr/bin/env bash
# Speech Commands V2-35 with the official SSAST recipe (frame model: 128x2 patches, stride 128x1,
# 128 frames): lr 2.5e-4, 30 epochs, batch 128, warm-up (1000 iterations), step schedule (from
# epoch 5, x0.85 every epoch), SpecAugment 48/48, mixup 0.6, noise, binary cross-entropy, accuracy.
#
#   finetune/speechcommands/run.sh DATA OUT [INIT] [more ssast finetune options]
#
# DATA: the output of `ssast prep speechcommands DATA` (made here if missing: downloads the
# dataset; `ssast synth-speech RAW && ssast prep speechcommands DATA --root RAW` for the built-in
# data). INIT: default $SSAST_PRETRAINED_DIR/SSAST-Base-Frame-400.pth. Writes OUT/results.csv
# (test row last) and OUT/best.pt. NPROC=4 runs on 4 GPUs.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 DATA OUT [INIT] [ssast finetune options]" >&2
  exit 2
fi
DATA=$1 OUT=$2
shift 2
INIT=${SSAST_PRETRAINED_DIR:-$HOME/.cache/ssast}/SSAST-Base-Frame-400.pth
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then INIT=$1; shift; fi
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../_launch.sh"
[ -f "$DATA/speechcommand_train_data.json" ] || "$PYTHON" -m ssast.cli prep speechcommands "$DATA"
ssast_finetune --train "$DATA/speechcommand_train_data.json" --valid "$DATA/speechcommand_valid_data.json" \
  --test "$DATA/speechcommand_eval_data.json" --label-csv "$DATA/class_labels_indices.csv" \
  --out "$OUT" --init "$INIT" --resume \
  --preset speechcommands --fshape 128 --tshape 2 --fstride 128 --tstride 1 --task ft_avgtok \
  --freqm 48 --timem 48 --mixup 0.6 --noise \
  --epochs 30 --batch-size "$(per_process 128)" --lr 2.5e-4 --head-lr 1 --warmup --warmup-steps 1000 \
  --lr-scheduler step --lr-scheduler-start 5 --lr-scheduler-step 1 --lr-decay 0.85 \
  --loss bce --metric acc --no-wa "$@"
