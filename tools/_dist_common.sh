# Sourced by dist_train.sh / dist_test.sh: the repo root, the python to use, and the
# torchrun command line (environment: NNODES, NODE_RANK, MASTER_ADDR, PORT, PYTHON).
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT:${PYTHONPATH:-}"
TORCHRUN=("$PYTHON" -m torch.distributed.run
  --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}"
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${PORT:-29500}")
