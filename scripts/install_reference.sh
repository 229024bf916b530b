#!/usr/bin/env bash
# Install the reference that tests/test_upstream.py compares the s3prl upstream with:
#   - s3prl 0.4.18 into .venv, allowed to add the packages it lacks but never to change one that
#     is already installed (torch, torchaudio, torchvision, timm, numpy, transformers, ...);
#   - timm 0.4.5 into .reference/timm045, outside the venv: s3prl's own ssast upstream asserts
#     timm==0.4.5, while ssast uses timm 1.x. Only the reference subprocess of the test puts that
#     folder first on PYTHONPATH.
# Run scripts/setup.sh first. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
S3PRL_VERSION=0.4.18
TIMM_REFERENCE_VERSION=0.4.5
TIMM_DIR=.reference/timm045

if [ ! -x "$PY" ]; then
  echo "error: $PY not found; run scripts/setup.sh first" >&2
  exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Every installed distribution pinned to its current version: pip may add s3prl's missing
# dependencies (omegaconf, requests, protobuf, ...) but cannot up- or downgrade anything.
"$PY" -m pip freeze --exclude-editable | grep -v '^-e ' | grep -v ' @ ' > "$work/constraints.txt"
"$PY" -m pip list --format=freeze > "$work/before.txt"

if ! "$PY" -m pip install -q "s3prl==$S3PRL_VERSION" -c "$work/constraints.txt"; then
  # Some dependency cannot be satisfied next to the pinned versions: install s3prl alone plus
  # what its upstream interfaces and the ssast upstream import.
  echo "note: s3prl's full dependency set conflicts with the installed versions; installing s3prl with --no-deps" >&2
  "$PY" -m pip install -q --no-deps "s3prl==$S3PRL_VERSION"
  "$PY" -m pip install -q omegaconf filelock requests -c "$work/constraints.txt"
fi

"$PY" -m pip list --format=freeze > "$work/after.txt"
# Lines present before but not after: a package that was changed or removed.
changed=$(comm -23 <(sort "$work/before.txt") <(sort "$work/after.txt") || true)
if [ -n "$changed" ]; then
  echo "error: installing s3prl changed these packages of the venv:" >&2
  echo "$changed" >&2
  exit 1
fi

# timm 0.4.5 alone (its dependencies, torch and torchvision, come from the venv).
rm -rf "$TIMM_DIR"
"$PY" -m pip install -q --no-deps --target "$TIMM_DIR" "timm==$TIMM_REFERENCE_VERSION"

"$PY" - <<EOF
import s3prl, timm
print(f"s3prl {s3prl.__version__} in the venv (venv timm {timm.__version__})")
EOF
PYTHONPATH="$TIMM_DIR" "$PY" -c "import timm; print(f'timm {timm.__version__} in $TIMM_DIR')"
