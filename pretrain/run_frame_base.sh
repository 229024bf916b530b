#!/usr/bin/env bash
# SSAST-Frame-Base-400: the released recipe. 128x2 patches, 400 masked per clip, the joint objective
# (nce + 10 * mse), base model on 1024-frame clips; Adam lr 1e-4, 24 clips per step, validation and
# checkpoints every 4000 steps, 20 epochs (the official run_mask_frame.sh).
#
#   pretrain/run_frame_base.sh DATA VALID OUTDIR [more ssast pretrain options]
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
GLOBAL_BATCH=${GLOBAL_BATCH:-24}
EPOCHS=${EPOCHS:-20}
ssast_launch "$1" "$2" "$3" \
  --model-size base --fshape 128 --tshape 2 --target-length 1024 --mask-patch 400 \
  --objective joint --mpg-weight 10 --lr 1e-4 --warmup-steps 1000 --lr-patience 2 \
  --valid-every 4000 --save-every 4000 "${@:4}"
