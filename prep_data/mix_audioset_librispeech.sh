#!/usr/bin/env bash
# A pretraining mixture of AudioSet and Librispeech (weights proportional to clips by default).
# Usage: prep_data/mix_audioset_librispeech.sh AUDIOSET LIBRISPEECH [OUT=data/pretrain_mix.json] [ssast prep mix options]
#   AUDIOSET, LIBRISPEECH: shard patterns or folders (ssast shards), or JSON datafiles.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 AUDIOSET LIBRISPEECH [OUT] [options]" >&2
    exit 2
fi
audioset="$1"
librispeech="$2"
out="${3:-data/pretrain_mix.json}"
shift $(( $# > 2 ? 3 : 2 ))
exec ssast prep mix "$out" --source "audioset=$audioset" --source "librispeech=$librispeech" "$@"
