#!/usr/bin/env bash
# Speech Commands V2-35: download, then train/valid/test datafiles from the official lists.
# Usage: prep_data/speechcommands.sh [OUT=data/speechcommands] [ssast prep speechcommands options]
set -euo pipefail
out="${1:-data/speechcommands}"
shift $(( $# > 0 ? 1 : 0 ))
exec ssast prep speechcommands "$out" "$@"
