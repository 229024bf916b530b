#!/usr/bin/env bash
# ESC-50: download, resample to 16 kHz, 5 folds of JSON datafiles and the label CSV.
# Usage: prep_data/esc50.sh [OUT=data/esc50] [ssast prep esc50 options, e.g. --archive ESC-50-master.zip]
set -euo pipefail
out="${1:-data/esc50}"
shift $(( $# > 0 ? 1 : 0 ))
exec ssast prep esc50 "$out" "$@"
