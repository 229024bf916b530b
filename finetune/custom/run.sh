#!/usr/bin/env bash
# Fine-tune on your own labelled audio with one command.
#
#   finetune/custom/run.sh PATH [PRETRAINED] [more ssast finetune options]
#
# PATH: a folder with one sub-folder per class (frogs/a.wav, crickets/b.flac, ...) or a CSV with
# a path column and a label column (several labels of one clip separated by ";" or ",": a
# multi-label task, trained with binary cross-entropy and picked by mAP).
# PRETRAINED: an SSAST checkpoint or a pretraining run folder (default:
# $SSAST_PRETRAINED_DIR/SSAST-Base-Patch-400.pth when it is there, else random initialisation);
# also imagenet, audioset or scratch.
#
# What it does (OUT defaults to ./finetune_<name of PATH>, or set OUT=...):
# - with no --valid among the options, splits PATH into train (80%), validation (10%) and test
#   (10%) per class, with a fixed seed, into OUT/splits/{train,valid,test}.csv (a class with
#   fewer than 3 clips stays in train only); with --valid, PATH is the training set;
# - input length: the median clip length, in 10 ms frames (at least 100, at most 1024);
# - normalization: mean and std of the training clips' fbank (computed by ssast finetune);
# - ESC-50-like settings: lr 1e-4 (mlp_head x10), 16x16 patches at stride 10, step schedule,
#   SpecAugment (24 mel bins, about a fifth of the frames), noise, no mixup; EPOCHS (default 30)
#   and BATCH (default 24) from the environment.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 PATH [PRETRAINED] [ssast finetune options]" >&2
  exit 2
fi
SRC=$1
shift
DEFAULT=${SSAST_PRETRAINED_DIR:-$HOME/.cache/ssast}/SSAST-Base-Patch-400.pth
INIT=scratch
[ -f "$DEFAULT" ] && INIT=$DEFAULT
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then INIT=$1; shift; fi
OUT=${OUT:-finetune_$(basename "${SRC%.csv}")}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../_launch.sh"
HAS_VALID=0
for a in "$@"; do [ "$a" = "--valid" ] && HAS_VALID=1; done
mkdir -p "$OUT/splits"
# Split (unless --valid is given) and measure the clips; prints: TARGET_LENGTH TRAIN VALID TEST
read -r TLEN TRAIN VALID TEST < <("$PYTHON" - "$SRC" "$OUT/splits" "$HAS_VALID" <<'PY'
import csv, random, statistics, sys
from ssast.audio import AudioError, audio_info
from ssast.sources import read_source
src, out, has_valid = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
source = read_source(src, labeled=True)
if not source.labeled:
    sys.exit(f"{src}: no labels: give a folder per class or a CSV with a label column")
lengths = []
for it in random.Random(0).sample(source.items, min(500, len(source.items))):
    try:
        rate, frames, _ = audio_info(it.path)
        lengths.append(frames / rate)
    except AudioError:
        pass
tlen = max(100, min(1024, round(statistics.median(lengths) * 100))) if lengths else 1024
if has_valid:
    print(tlen, src, "-", "-")
    sys.exit()
by_class = {}
for it in source.items:
    by_class.setdefault(it.labels[0] if it.labels else "", []).append(it)
splits = {"train": [], "valid": [], "test": []}
rng = random.Random(0)
for name in sorted(by_class):
    items = by_class[name]
    rng.shuffle(items)
    n = len(items)
    k = max(1, round(0.1 * n)) if n >= 3 else 0
    splits["valid"] += items[:k]
    splits["test"] += items[k:2 * k]
    splits["train"] += items[2 * k:]
for split, items in splits.items():
    with open(f"{out}/{split}.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "labels"])
        w.writerows([it.path, ";".join(it.labels)] for it in items)
print(tlen, *(f"{out}/{s}.csv" for s in ("train", "valid", "test")))
PY
)
echo "clips of about $((TLEN * 10)) ms: target length $TLEN frames; init: $INIT"
SPLIT=()
[ "$VALID" != "-" ] && SPLIT=(--valid "$VALID" --test "$TEST")
TIMEM=$(( TLEN * 96 / 512 ))
ssast_finetune --train "$TRAIN" "${SPLIT[@]}" --out "$OUT" --init "$INIT" --resume \
  --target-length "$TLEN" --fshape 16 --tshape 16 --fstride 10 --tstride 10 --task ft_avgtok \
  --freqm 24 --timem "$TIMEM" --mixup 0 --noise \
  --epochs "${EPOCHS:-30}" --batch-size "$(per_process "${BATCH:-24}")" --lr 1e-4 --head-lr 10 --no-warmup \
  --lr-scheduler step --lr-scheduler-start 5 --lr-scheduler-step 1 --lr-decay 0.85 "$@"
