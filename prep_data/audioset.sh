#!/usr/bin/env bash
# AudioSet from your own audio files (named by YouTube id) and the official segment CSVs.
# Usage: prep_data/audioset.sh OUT --audio DIR [DIR ...] [ssast prep audioset options]
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 OUT --audio DIR [DIR ...] [options]" >&2
    exit 2
fi
exec ssast prep audioset "$@"
