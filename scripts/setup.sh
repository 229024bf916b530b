#!/usr/bin/env bash
# Create .venv (if needed) and install ssast with its pinned dependencies and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
# System tools: espeak-ng (built-in speech data), sox (resampling, test sounds), zip (FSD50K parts).
if ! command -v espeak-ng >/dev/null 2>&1 || ! command -v sox >/dev/null 2>&1 || ! command -v zip >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox zip >/dev/null
  else
    echo "note: install espeak-ng and sox (e.g. sudo apt-get install espeak-ng sox) for the built-in speech data" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip wheel setuptools
.venv/bin/python -m pip install -q -e ".[test]"
# DeepSpeed compiles nothing here (DS_BUILD_OPS=0: ops are built just in time on GPU machines) and
# must see the installed torch, hence no build isolation.
if ! .venv/bin/python -c "import deepspeed" >/dev/null 2>&1; then
  DS_BUILD_OPS=0 .venv/bin/python -m pip install -q --no-build-isolation "deepspeed==0.19.8"
fi
.venv/bin/python -c "import ssast, torch, torchaudio, torchvision, timm, deepspeed; print(f'ssast {ssast.__version__}: torch {torch.__version__}, torchaudio {torchaudio.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}, deepspeed {deepspeed.__version__}')" 2>&1 | grep -v "real_accelerator"
# The reference implementations the tests compare against: s3prl 0.4.18, and timm 0.4.5 in
# .reference/ (outside the venv) for s3prl's own ssast upstream.
bash scripts/install_reference.sh
