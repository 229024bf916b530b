#!/usr/bin/env bash
# SSAST-Patch-Tiny-400: the released recipe. 16x16 patches, 400 masked per clip, the joint objective
# (nce + 10 * mse), tiny model on 1024-frame clips; Adam lr 5e-4, 120 clips per step, validation and
# checkpoints every 800 steps, 20 epochs (the official run_mask_patch_tiny.sh).
#
#   pretrain/run_patch_tiny.sh DATA VALID OUTDIR [more ssast pretrain options]
#
# DATA: the AudioSet + Librispeech mixture (a mixture JSON from `ssast prep mix`, shard patterns or
# a JSON datafile); VALID: the validation set (the official recipe used the AudioSet evaluation set).
# Run it again with the same OUTDIR to resume. Environment: see _launch.sh (NGPU, ACCUM, CLIPS, ...).
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 DATA VALID OUTDIR [ssast pretrain options]" >&2
  exit 2
fi
. "$(dirname "$0")/_launch.sh"
GLOBAL_BATCH=${GLOBAL_BATCH:-120}
EPOCHS=${EPOCHS:-20}
ssast_launch "$1" "$2" "$3" \
  --model-size tiny --fshape 16 --tshape 16 --target-length 1024 --mask-patch 400 \
  --objective joint --mpg-weight 10 --lr 5e-4 --warmup-steps 1000 --lr-patience 2 \
  --valid-every 800 --save-every 800 "${@:4}"
