#!/usr/bin/env bash
# ESC-50, 5-fold cross-validation, with the official SSAST recipe (patch model, 16x16 patches at
# stride 10, 512 frames): lr 1e-4 (mlp_head x10), 50 epochs, batch 48, no warm-up, step schedule
# (from epoch 5, x0.85 every epoch), SpecAugment 24/96, noise, no mixup, cross-entropy, accuracy.
#
#   finetune/esc50/run.sh DATA OUT [INIT] [more ssast finetune options]
#
# DATA: the output of `ssast prep esc50 DATA` (made here if missing: downloads ESC-50).
# INIT: default $SSAST_PRETRAINED_DIR/SSAST-Base-Patch-400.pth (the released patch model); also
# a pretraining run folder, another checkpoint, imagenet, audioset or scratch.
# Each fold k trains on esc_train_data_k.json and is evaluated on esc_eval_data_k.json (as the
# official recipe, the evaluation fold is also the validation set). OUT/fold<k>/results.csv per
# fold; OUT/summary.csv: the accuracy of each fold and the mean at the epoch where the mean of
# the five folds' accuracy curves peaks (the official summary), and at the last epoch.
# NPROC=4 runs each fold on 4 GPUs.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 DATA OUT [INIT] [ssast finetune options]" >&2
  exit 2
fi
DATA=$1 OUT=$2
shift 2
INIT=${SSAST_PRETRAINED_DIR:-$HOME/.cache/ssast}/SSAST-Base-Patch-400.pth
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then INIT=$1; shift; fi
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../_launch.sh"
[ -f "$DATA/esc_train_data_1.json" ] || "$PYTHON" -m ssast.cli prep esc50 "$DATA"
for k in 1 2 3 4 5; do
  ssast_finetune --train "$DATA/esc_train_data_$k.json" --valid "$DATA/esc_eval_data_$k.json" \
    --label-csv "$DATA/class_labels_indices.csv" --out "$OUT/fold$k" --init "$INIT" --resume \
    --preset esc50 --fshape 16 --tshape 16 --fstride 10 --tstride 10 --task ft_avgtok \
    --freqm 24 --timem 96 --mixup 0 --noise \
    --epochs 50 --batch-size "$(per_process 48)" --lr 1e-4 --head-lr 10 --no-warmup \
    --lr-scheduler step --lr-scheduler-start 5 --lr-scheduler-step 1 --lr-decay 0.85 \
    --loss ce --metric acc --no-wa "$@"
done
"$PYTHON" - "$OUT" <<'PY'
import csv, sys
out = sys.argv[1]
# As the official summary: average the folds' per-epoch accuracy curves, take the epoch where the
# mean is highest, and report each fold's accuracy at that epoch and their mean.
curves = []
for k in range(1, 6):
    rows = [r for r in csv.DictReader(open(f"{out}/fold{k}/results.csv")) if r["split"] == "valid"]
    curves.append([float(r["acc"]) for r in rows])
n = min(len(c) for c in curves)
mean = [sum(c[e] for c in curves) / 5 for e in range(n)]
best = max(range(n), key=lambda e: mean[e])
with open(f"{out}/summary.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["fold", "acc", "epoch", "last_epoch_acc", "own_best_acc"])
    for k, c in enumerate(curves, start=1):
        w.writerow([k, f"{c[best]:.6g}", best + 1, f"{c[n - 1]:.6g}", f"{max(c):.6g}"])
        print(f"fold {k}: accuracy {c[best]:.4f} at epoch {best + 1} (last epoch {c[n - 1]:.4f})")
    w.writerow(["mean", f"{mean[best]:.6g}", best + 1, f"{mean[n - 1]:.6g}", f"{sum(max(c) for c in curves) / 5:.6g}"])
print(f"ESC-50 5-fold mean accuracy {mean[best]:.4f} at epoch {best + 1} (last epoch {mean[n - 1]:.4f}); {out}/summary.csv")
PY
