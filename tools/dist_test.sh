#!/usr/bin/env bash
# Distributed testing: bash tools/dist_test.sh CONFIG CHECKPOINT NPROC [test.py args]
# Environment: NNODES, NODE_RANK, MASTER_ADDR, PORT (default 29500), PYTHON.
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 CONFIG CHECKPOINT NPROC [tools/test.py arguments]" >&2; exit 2
fi
CONFIG=$1
CHECKPOINT=$2
NPROC=$3
shift 3
source "$(dirname "$0")/_dist_common.sh"
exec "${TORCHRUN[@]}" --nproc_per_node="$NPROC" \
  "$ROOT/tools/test.py" "$CONFIG" "$CHECKPOINT" --launcher pytorch "$@"
