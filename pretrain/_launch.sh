# Shared by the recipe scripts (sourced, not run): launches `ssast pretrain` on the GPUs of this
# machine with torchrun, one process per GPU, sizing the per-GPU batch from the recipe's global one.
#
# Environment (all optional):
#   NGPU          processes / GPUs to use (default: all GPUs nvidia-smi lists)
#   GLOBAL_BATCH  clips per optimizer step over all GPUs (default: the recipe's)
#   ACCUM         gradient accumulation steps (default 1; the micro batch is GLOBAL_BATCH / (NGPU * ACCUM))
#   EPOCHS        passes over the training data (default: the recipe's)
#   CLIPS         training clips in DATA (default 2281241: about 2.0M AudioSet + 281,241 Librispeech clips)
#   MAX_STEPS     optimizer steps (default: EPOCHS * CLIPS / GLOBAL_BATCH)
#   DS_CONFIG     DeepSpeed engine settings (default: ds_config_zero2_bf16.json beside this file)
#   PYTHON        the Python that has ssast installed (default: python)

ssast_launch() {
  local data=$1 valid=$2 out=$3
  shift 3
  local here
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  local ngpu=${NGPU:-$(nvidia-smi -L 2>/dev/null | wc -l)}
  if [ "$ngpu" -lt 1 ]; then
    echo "no GPU found (set NGPU, or use run_smoke_cpu.sh for a CPU run)" >&2
    return 2
  fi
  local accum=${ACCUM:-1}
  local per=$((ngpu * accum))
  if [ $((GLOBAL_BATCH % per)) -ne 0 ]; then
    echo "GLOBAL_BATCH=$GLOBAL_BATCH is not divisible by NGPU*ACCUM=$per" >&2
    return 2
  fi
  local micro=$((GLOBAL_BATCH / per))
  local clips=${CLIPS:-2281241}
  local max_steps=${MAX_STEPS:-$((EPOCHS * clips / GLOBAL_BATCH))}
  local ds=${DS_CONFIG:-$here/ds_config_zero2_bf16.json}
  # Gradient accumulation is an engine setting: a copy of the JSON with ACCUM in it.
  if [ "$accum" -ne 1 ]; then
    mkdir -p "$out"
    "${PYTHON:-python}" - "$ds" "$accum" "$out/ds_config.json" <<'PY'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["gradient_accumulation_steps"] = int(sys.argv[2])
json.dump(cfg, open(sys.argv[3], "w"), indent=1)
PY
    ds=$out/ds_config.json
  fi
  echo "ssast pretrain on $ngpu GPU(s): $GLOBAL_BATCH clips per step ($micro per GPU x $accum accumulation), $max_steps steps"
  exec "${PYTHON:-python}" -m torch.distributed.run --standalone --nproc_per_node "$ngpu" -m ssast.cli pretrain \
    --train "$data" --valid "$valid" --out "$out" --resume \
    --batch-size "$micro" --max-steps "$max_steps" --deepspeed-config "$ds" "$@"
}
