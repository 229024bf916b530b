#!/usr/bin/env bash
# A CPU smoke run of the whole pretraining path: 2 processes (torchrun, gloo, ZeRO stage 2, fp32)
# on the built-in speech data, a tiny model on 1-second clips (100 frames, 16x16 patches: an 8x6
# grid, 36 masked), a few minutes on 2 cores. Ends with OUTDIR/ssast_released.pth (released
# format) and OUTDIR/ssast.pt (project format).
#
#   pretrain/run_smoke_cpu.sh OUTDIR [more ssast pretrain options, e.g. --max-steps 400]
#
# The data is generated into OUTDIR/data on the first run (ssast synth-speech, ssast prep
# speechcommands, ssast shards). Run it again with the same OUTDIR: it resumes from the newest
# complete checkpoint, does nothing if the run is finished, or goes on to a larger --max-steps.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 OUTDIR [ssast pretrain options]" >&2
  exit 2
fi
OUT=$1
shift
HERE=$(cd "$(dirname "$0")" && pwd)
PYTHON=${PYTHON:-python}
DATA=$OUT/data
if [ ! -f "$DATA/speechcommand_train_data.json" ]; then
  if [ ! -f "$DATA/raw/validation_list.txt" ]; then
    rm -rf "$DATA/raw"
    "$PYTHON" -m ssast.cli synth-speech "$DATA/raw" --per-word 40
  fi
  "$PYTHON" -m ssast.cli prep speechcommands "$DATA" --root "$DATA/raw"
fi
if [ ! -f "$DATA/shards/manifest.json" ]; then
  "$PYTHON" -m ssast.cli shards "$DATA/speechcommand_train_data.json" "$DATA/shards" --max-count 64 --overwrite --no-progress
fi
# Speech Commands' normalization statistics (the official fine-tuning recipe's).
exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node 2 -m ssast.cli pretrain \
  --train "$DATA/shards" --valid "$DATA/speechcommand_valid_data.json" --out "$OUT" --resume \
  --model-size tiny --fshape 16 --tshape 16 --target-length 100 --mask-patch 36 \
  --mean -6.845978 --std 5.5654526 \
  --batch-size 8 --max-steps 120 --warmup-steps 20 --lr 5e-4 \
  --valid-every 40 --save-every 40 --keep-last 2 --log-every 10 --num-workers 1 \
  --deepspeed-config "$HERE/ds_config_cpu.json" "$@"
