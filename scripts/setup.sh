#!/usr/bin/env bash
# Create .venv (if needed) and install ssast with its pinned dependencies and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip wheel setuptools
.venv/bin/python -m pip install -q -e ".[test]"
.venv/bin/python -c "import ssast, torch, torchaudio, torchvision, timm; print(f'ssast {ssast.__version__}: torch {torch.__version__}, torchaudio {torchaudio.__version__}, torchvision {torchvision.__version__}, timm {timm.__version__}')"
