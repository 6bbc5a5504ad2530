#!/usr/bin/env bash
# The GPU check (issue #15 §5): bash tools/gpu_check.sh [tools/gpu_check.py arguments]
# Needs a CUDA machine and the set-up venv (tools/setup_env.sh); about 2-5 minutes.
# Never needed by CI. Prints one Markdown table, also written to work_dirs/gpu_check.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python
exec "$PYTHON" "$ROOT/tools/gpu_check.py" "$@"
