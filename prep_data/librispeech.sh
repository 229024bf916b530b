#!/usr/bin/env bash
# Librispeech (960 h by default) as unlabeled pretraining data.
# Usage: prep_data/librispeech.sh [OUT=data/librispeech] [ssast prep librispeech options, e.g. --subsets dev-clean]
set -euo pipefail
out="${1:-data/librispeech}"
shift $(( $# > 0 ? 1 : 0 ))
exec ssast prep librispeech "$out" "$@"
