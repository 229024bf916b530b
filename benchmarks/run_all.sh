#!/usr/bin/env bash
# Run every benchmark, one after the other, on a quiet machine; figures go to OUT
# (default benchmarks/results) as .txt (what was printed) and .json.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
run() {  # name, then the command's arguments
  local name=$1; shift
  echo "== $name: $*"
  "$PY" "$@" 2>&1 | grep -v -e "real_accelerator" -e "Loading weights" -e "Writing model" | tee "$OUT/$name.txt"
}
run pretrain_step benchmarks/pretrain_step.py --ranks 2 --json "$OUT/pretrain_step.json"
run gemm_rate benchmarks/gemm_rate.py
run pretrain_memory benchmarks/pretrain_memory.py --sizes tiny base --batch 2 --steps 2 --json "$OUT/pretrain_memory.json"
run features benchmarks/features.py --json "$OUT/features.json"
run data_loading benchmarks/data_loading.py --clips 200 --num-workers 1 --batch 16 --json "$OUT/data_loading.json"
run inference benchmarks/inference.py --size base --batch 2 --steps 2
run predict_rtf benchmarks/predict_rtf.py --minutes 60
run stats_memory benchmarks/stats_memory.py --minutes 10 --json "$OUT/stats_memory.json"
run extract benchmarks/extract.py --json "$OUT/extract.json"
