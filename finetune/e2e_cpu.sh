#!/usr/bin/env bash
# End to end on CPU, on the built-in speech data: pretrain a small model for a few minutes, then
# fine-tune it and a randomly initialised twin with the same budget (same steps, seed and
# settings), and print both test accuracies.
#
#   finetune/e2e_cpu.sh OUTDIR
#
# Knobs (environment): PER_WORD (clips per word, default 80), PRETRAIN_STEPS (default 2000),
# EPOCHS (fine-tuning epochs, default 20), LR (fine-tuning rate, default 5e-4), MODEL (encoder
# size JSON; default 4 blocks of width 192: the tiny model's width and a third of its depth, so
# that a few CPU minutes give enough pretraining steps), FT_ARGS (more ssast finetune options for
# both fine-tuning runs, e.g. "--head-lr 10") and FT_TAG (suffix of their folders, to compare
# settings on one pretrained model: the pretraining run is resumed, i.e. reused, when it is done).
#
# Data: ssast synth-speech (10 command words, PER_WORD clips per word, 1-second clips) and ssast
# prep speechcommands: 640 training, 80 validation and 80 test clips (test speakers are unseen
# in training). Pretraining reads the training
# clips without their labels (pretrain/run_smoke_cpu.sh: 2 processes, 16x16 patches on 128 mel
# bins x 100 frames, an 8x6 grid, 36 of 48 patches masked). Fine-tuning: the same 16x16 patches
# at stride 16 (no overlap: the pretraining grid, and a third of the tokens of stride 10), mean
# of the patch tokens, the Speech Commands normalization, SpecAugment scaled to 1-second clips,
# noise, no mixup, cross-entropy (the official recipe's BCE learns 10 classes more slowly, which
# a budget of minutes cannot afford; see finetune/README.md).
set -euo pipefail
if [ $# -ne 1 ]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
OUT=$1
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PYTHON=${PYTHON:-python}
PER_WORD=${PER_WORD:-80}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-2000}
EPOCHS=${EPOCHS:-20}
LR=${LR:-5e-4}
mkdir -p "$OUT"
MODEL=${MODEL:-$OUT/model.json}
[ -f "$MODEL" ] || echo '{"embed_dim": 192, "depth": 4, "num_heads": 3, "num_prefix_tokens": 2}' > "$MODEL"

# 1. Data, then pretraining with the smoke recipe (which makes the shards; resumable).
SECONDS=0
DATA=$OUT/pretrain/data
if [ ! -f "$DATA/speechcommand_train_data.json" ]; then
  rm -rf "$DATA/raw"
  "$PYTHON" -m ssast.cli synth-speech "$DATA/raw" --per-word "$PER_WORD"
  "$PYTHON" -m ssast.cli prep speechcommands "$DATA" --root "$DATA/raw"
fi
echo "data ready in ${SECONDS}s"
SECONDS=0
"$REPO/pretrain/run_smoke_cpu.sh" "$OUT/pretrain" --model-config "$MODEL" --max-steps "$PRETRAIN_STEPS" \
  --valid-every 100 --save-every 100 --log-every 50 --warmup-steps 50 --no-progress
echo "pretraining done in ${SECONDS}s"

# 2. Fine-tuning from the pretrained model and from scratch: everything equal but --init.
finetune() {
  "$PYTHON" -m ssast.cli finetune --init "$1" --out "$2" \
    --train "$DATA/speechcommand_train_data.json" --valid "$DATA/speechcommand_valid_data.json" \
    --test "$DATA/speechcommand_eval_data.json" \
    --fshape 16 --tshape 16 --fstride 16 --tstride 16 --target-length 100 \
    --dataset-mean -6.845978 --dataset-std 5.5654526 --freqm 24 --timem 24 --mixup 0 --noise \
    --task ft_avgtok --loss ce --metric acc --epochs "$EPOCHS" --batch-size 16 --lr "$LR" --head-lr 1 \
    --warmup --warmup-steps 40 --lr-scheduler step --lr-scheduler-start 5 --lr-scheduler-step 1 --lr-decay 0.85 \
    --seed 0 --num-workers 1 --device cpu --no-progress --log-every 20 ${FT_ARGS:-} "${@:3}"
}
TAG=${FT_TAG:-}
SECONDS=0
finetune "$OUT/pretrain" "$OUT/ft_pretrained$TAG" --resume
echo "fine-tuning (pretrained start) done in ${SECONDS}s"
SECONDS=0
finetune scratch "$OUT/ft_scratch$TAG" --model-config "$MODEL" --resume
echo "fine-tuning (scratch) done in ${SECONDS}s"

# 3. The two test accuracies (the results' test row: the best epoch's model on the test set).
"$PYTHON" - "$OUT" "$TAG" <<'EOF'
import csv, sys
out, tag = sys.argv[1], sys.argv[2]
for name in ("ft_pretrained" + tag, "ft_scratch" + tag):
    rows = list(csv.DictReader(open(f"{out}/{name}/results.csv")))
    test = [r for r in rows if r["split"] == "test"][-1]
    best = max(float(r["acc"]) for r in rows if r["split"] == "valid")
    print(f"{name:14s} test accuracy {float(test['acc']):.4f} (best epoch {test['epoch']}, valid accuracy {best:.4f})")
EOF
