#!/usr/bin/env bash
# The GPU check: kill-and-resume of a bf16 DeepSpeed pretraining run, pretraining clips/s and the
# fraction of the GPU's bf16 peak (one and two encoder passes, eager and compiled), batched fbank,
# fine-tuning and inference against transformers' AST, peak memory of each; one table, printed and
# written to OUT/gpu_check.txt (figures in OUT/gpu_check.json). Under 8 minutes on one GPU; needs
# no network and installs nothing.
#
#   bash benchmarks/gpu_check.sh [--out OUT]          # on a GPU (OUT: default benchmarks/results)
#   bash benchmarks/gpu_check.sh --cpu [--out OUT]    # tiny sizes on the CPU, to test the check
#
# Python: $PYTHON, else .venv/bin/python, else python3 (it needs torch; DeepSpeed and transformers
# for rows a and d, which fail alone without them). Exit status 1 when any row failed.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
  PY=$PYTHON
elif [ -x .venv/bin/python ]; then
  PY=.venv/bin/python
elif command -v python3 >/dev/null 2>&1; then
  PY=python3
else
  echo "gpu_check.sh: no Python found: set PYTHON, or create .venv, or put python3 on PATH" >&2
  exit 2
fi
if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "gpu_check.sh: $PY cannot import torch; every row needs it (set PYTHON to a Python that has torch)" >&2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py "$@"
