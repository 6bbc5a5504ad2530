#!/usr/bin/env bash
# Distributed training: bash tools/dist_train.sh CONFIG NPROC [train.py args]
# GPUs: one process per GPU (nccl). Without CUDA: NPROC CPU processes (gloo).
# Environment: NNODES, NODE_RANK, MASTER_ADDR, PORT (default 29500), PYTHON.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CONFIG NPROC [tools/train.py arguments]" >&2; exit 2
fi
CONFIG=$1
NPROC=$2
shift 2
source "$(dirname "$0")/_dist_common.sh"
exec "${TORCHRUN[@]}" --nproc_per_node="$NPROC" \
  "$ROOT/tools/train.py" "$CONFIG" --launcher pytorch "$@"
