#!/usr/bin/env bash
# The built-in speech dataset: generate it with espeak-ng, then prepare it with the Speech Commands recipe.
# Usage: prep_data/synth_speech.sh [OUT=data/synth_speech] [ssast synth-speech options, e.g. --per-word 40]
# Writes OUT/raw (the Speech-Commands-like tree) and OUT/speechcommand_{train,valid,eval}_data.json.
set -euo pipefail
out="${1:-data/synth_speech}"
shift $(( $# > 0 ? 1 : 0 ))
if [ ! -f "$out/raw/validation_list.txt" ]; then
    ssast synth-speech "$out/raw" "$@"
fi
exec ssast prep speechcommands "$out" --root "$out/raw"
