#!/usr/bin/env bash
# FSD50K: download from Zenodo, resample to 16 kHz, train/valid/eval datafiles and the label CSV.
# Usage: prep_data/fsd50k.sh [OUT=data/fsd50k] [ssast prep fsd50k options, e.g. --root EXTRACTED_FSD50K]
set -euo pipefail
out="${1:-data/fsd50k}"
shift $(( $# > 0 ? 1 : 0 ))
exec ssast prep fsd50k "$out" "$@"
