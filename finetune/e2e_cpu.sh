#!/usr/bin/env bash
# End to end on a CPU: pretrain a small frame model on unlabeled audio, fine-tune it and a
# randomly initialised twin with the same budget (same steps, seed and settings: only --init
# differs), score both on unseen speakers, and set them beside a logistic regression on pooled
# log-mel statistics (benchmarks/logreg_baseline.py).
#
#   finetune/e2e_cpu.sh OUT [DATA]
#
# DATA (optional): any folder laid out as DATA/{train,valid,test}/<label>/*.wav, with an optional
# DATA/unlabeled/ of audio without labels. Without DATA, the built-in set is generated into
# OUT/data (ssast synth-speech: 10 command words, _silence_ and _unknown_, an unlabeled pool;
# ssast prep speechcommands: test speakers unseen in training). Pretraining reads the unlabeled
# audio and the training clips without their labels.
#
# Writes OUT/summary.json: {"pretrained": {"test_acc": ...}, "scratch": {"test_acc": ...},
# "logreg": {"test_acc": ...}, "minutes": ..., "settings": {...}}. Run it again with the same
# OUT to resume: finished stages are reused, a killed stage continues from its last checkpoint
# ("minutes" is then the time of that run alone). The defaults are run B of finetune/README.md with
# layer-wise rate decay 0.75.
#
# Knobs (environment, defaults in brackets): PER_WORD [60] labelled clips per word, REPEATS [1]
# clips per speaker and word (1: PER_WORD speakers), SILENCE and
# UNKNOWN [60] clips of those classes, UNLABELED [3000] pool clips (built-in set only);
# TARGET_LENGTH [100] frames per clip; MODEL [4 blocks of width 192] encoder JSON;
# PRETRAIN_STEPS [2500], PRETRAIN_BATCH [32], PRETRAIN_LR [1e-3], MASK [30] masked frames of the
# 50; FT_EPOCHS [40], FT_BATCH [32], FT_LR [1e-3], LAYER_DECAY [0.75]
# (fine-tuning's layer-wise rate decay; 1: off); FT_ARGS (more ssast finetune options for both
# runs) and FT_TAG (suffix of their folders, to compare fine-tuning settings on one pretrained
# model); PRETRAINED [OUT/pretrain] the model the pretrained run starts from (e.g. one of
# OUT/pretrain/checkpoints/global_stepN, with FT_TAG, for the curve of fine-tuning accuracy
# against pretraining steps); THREADS [1] torch threads per process (with one data-loading
# process beside it, two cores are busy; two threads per process stall whenever another job takes
# a core); PYTHON [python].
set -euo pipefail
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  echo "usage: $0 OUT [DATA]" >&2
  exit 2
fi
OUT=$1
DATA=${2:-}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
PYTHON=${PYTHON:-python}
PER_WORD=${PER_WORD:-60}
REPEATS=${REPEATS:-1}
SILENCE=${SILENCE:-60}
UNKNOWN=${UNKNOWN:-60}
UNLABELED=${UNLABELED:-3000}
TARGET_LENGTH=${TARGET_LENGTH:-100}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-2500}
PRETRAIN_BATCH=${PRETRAIN_BATCH:-32}
PRETRAIN_LR=${PRETRAIN_LR:-1e-3}
MASK=${MASK:-30}
FT_EPOCHS=${FT_EPOCHS:-40}
FT_BATCH=${FT_BATCH:-32}
FT_LR=${FT_LR:-1e-3}
LAYER_DECAY=${LAYER_DECAY:-0.75}
THREADS=${THREADS:-1}
TAG=${FT_TAG:-}
export OMP_NUM_THREADS=$THREADS
mkdir -p "$OUT"
MODEL=${MODEL:-$OUT/model.json}
[ -f "$MODEL" ] || echo '{"embed_dim": 192, "depth": 4, "num_heads": 3, "num_prefix_tokens": 2}' > "$MODEL"
ssast() { "$PYTHON" -m ssast.cli "$@"; }
START=$(date +%s)
stage_start=$START
stage_done() {
  local now
  now=$(date +%s)
  echo "== $1 in $((now - stage_start)) s"
  stage_start=$now
}

# 1. Data.
if [ -z "$DATA" ]; then
  D=$OUT/data
  if [ ! -f "$D/speechcommand_train_data.json" ]; then
    rm -rf "$D/raw"
    ssast synth-speech "$D/raw" --per-word "$PER_WORD" --repeats "$REPEATS" --silence "$SILENCE" --unknown "$UNKNOWN" \
      --unlabeled "$UNLABELED" --num-workers "$THREADS"
    ssast prep speechcommands "$D" --root "$D/raw"
  fi
  TRAIN=$D/speechcommand_train_data.json VALID=$D/speechcommand_valid_data.json TEST=$D/speechcommand_eval_data.json
  UNLABELED_SRC=$D/raw/_unlabeled_
else
  for split in train valid test; do
    if [ ! -d "$DATA/$split" ]; then
      echo "$0: $DATA/$split: no such folder (expected DATA/{train,valid,test}/<label>/*.wav)" >&2
      exit 2
    fi
  done
  TRAIN=$DATA/train VALID=$DATA/valid TEST=$DATA/test
  UNLABELED_SRC=$DATA/unlabeled
fi
PRETRAIN_SRC=("$TRAIN")
[ -d "$UNLABELED_SRC" ] && PRETRAIN_SRC+=("$UNLABELED_SRC")
# One normalization for both stages: the training clips' own statistics.
if [ ! -f "$OUT/stats.json" ]; then
  ssast stats "$TRAIN" --target-length "$TARGET_LENGTH" --json "$OUT/stats.json" --no-progress
fi
read -r MEAN STD < <("$PYTHON" -c 'import json, sys; s = json.load(open(sys.argv[1])); print(s["mean"], s["std"])' \
  "$OUT/stats.json")
stage_done "data (mean $MEAN, std $STD)"

# 2. Pretraining: joint masked-frame classification and reconstruction, 128x2 frame patches.
at_least_1() { echo $(( $1 > 0 ? $1 : 1 )); }
FEATURES=(--target-length "$TARGET_LENGTH" --mean "$MEAN" --std "$STD")
ENGINE=(--device cpu --num-workers 1 --no-progress --seed 0)
ssast pretrain --train "${PRETRAIN_SRC[@]}" --valid "$VALID" --out "$OUT/pretrain" --model-config "$MODEL" \
  --fshape 128 --tshape 2 "${FEATURES[@]}" --mask-patch "$MASK" --max-steps "$PRETRAIN_STEPS" \
  --batch-size "$PRETRAIN_BATCH" --lr "$PRETRAIN_LR" --warmup-steps "$(at_least_1 $((PRETRAIN_STEPS / 10)))" \
  --valid-every "$(at_least_1 $((PRETRAIN_STEPS / 5)))" --save-every "$(at_least_1 $((PRETRAIN_STEPS / 5)))" \
  --keep-last 5 --log-every "$(at_least_1 $((PRETRAIN_STEPS / 10)))" --resume "${ENGINE[@]}"
stage_done "pretraining"

# 3. Fine-tuning from the pretrained model and from scratch: everything equal but --init.
finetune() {
  ssast finetune --init "$1" --out "$2" --train "$TRAIN" --valid "$VALID" --test "$TEST" \
    --fshape 128 --tshape 2 --fstride 128 --tstride 2 "${FEATURES[@]}" \
    --freqm 24 --timem 20 --mixup 0 --noise --task ft_avgtok --loss ce --metric acc \
    --epochs "$FT_EPOCHS" --batch-size "$FT_BATCH" --lr "$FT_LR" --layer-decay "$LAYER_DECAY" --warmup --warmup-steps 50 \
    --lr-scheduler cosine --log-every 20 --resume "${ENGINE[@]}" ${FT_ARGS:-} "${@:3}"
}
finetune "${PRETRAINED:-$OUT/pretrain}" "$OUT/ft_pretrained$TAG"
stage_done "fine-tuning from the pretrained model"
finetune scratch "$OUT/ft_scratch$TAG" --model-config "$MODEL"
stage_done "fine-tuning from scratch"

# 4. The baseline, and the summary.
[ -f "$OUT/logreg.json" ] || "$PYTHON" "$REPO/benchmarks/logreg_baseline.py" --train "$TRAIN" --valid "$VALID" \
  --test "$TEST" --json "$OUT/logreg.json"
export DATA PER_WORD REPEATS SILENCE UNKNOWN UNLABELED TARGET_LENGTH PRETRAIN_STEPS PRETRAIN_BATCH PRETRAIN_LR MASK \
  FT_EPOCHS FT_BATCH FT_LR LAYER_DECAY FT_ARGS THREADS MODEL
"$PYTHON" - "$OUT" "$TAG" "$(( $(date +%s) - START ))" <<'EOF'
import csv, json, os, sys
out, tag, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3])
summary = {}
for key, name in (("pretrained", "ft_pretrained" + tag), ("scratch", "ft_scratch" + tag)):
    rows = list(csv.DictReader(open(f"{out}/{name}/results.csv", newline="")))
    test = [r for r in rows if r["split"] == "test"][-1]
    valid = [float(r["acc"]) for r in rows if r["split"] == "valid"]
    summary[key] = {"test_acc": float(test["acc"]), "best_valid_acc": max(valid), "best_epoch": int(test["epoch"]),
                    "run": f"{out}/{name}"}
summary["logreg"] = {k: v for k, v in json.load(open(f"{out}/logreg.json")).items() if k in ("test_acc", "valid_acc")}
summary["minutes"] = round(seconds / 60, 2)
knobs = ("DATA", "PER_WORD", "REPEATS", "SILENCE", "UNKNOWN", "UNLABELED", "TARGET_LENGTH", "PRETRAIN_STEPS", "PRETRAIN_BATCH",
         "PRETRAIN_LR", "MASK", "FT_EPOCHS", "FT_BATCH", "FT_LR", "LAYER_DECAY", "FT_ARGS", "THREADS")
summary["settings"] = {k.lower(): os.environ.get(k, "") for k in knobs}
summary["settings"]["model"] = json.load(open(os.environ["MODEL"]))
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
for key in ("pretrained", "scratch", "logreg"):
    print(f"{key:10s} test accuracy {summary[key]['test_acc']:.4f}")
print(f"gain of pretraining {summary['pretrained']['test_acc'] - summary['scratch']['test_acc']:+.4f}; "
      f"{summary['minutes']:.1f} min in all; {out}/summary.json")
EOF
