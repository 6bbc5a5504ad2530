#!/usr/bin/env bash
# One-command set-up of mmctx on the pinned OpenMMLab stack (see README "Install").
#
#   bash tools/setup_env.sh            # create/refresh .venv in the repo root
#
# Environment:
#   PYTHON             interpreter the venv is made from (default: python3). If it
#                      already has a CUDA build of torch, the venv sees it
#                      (--system-site-packages) and keeps it.
#   PIP_FIND_LINKS     extra wheelhouses (space separated); a prebuilt mmcv 2.1.0 wheel
#                      there is used if it imports against the venv's torch.
#   MMCTX_WHEEL_CACHE  where a self-built mmcv wheel is cached
#                      (default: ${XDG_CACHE_HOME:-~/.cache}/mmctx/wheels).
#   MMCTX_VENV         venv location (default: <repo>/.venv).
#
# Idempotent: every step checks what is already there; a second run takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMCTX_VENV:-$ROOT/.venv}"
BASE_PY="${PYTHON:-python3}"
TORCH_VERSION="2.13.0"
MMCV_VERSION="2.1.0"
SETUPTOOLS_VERSION="80.9.0"
CACHE_ROOT="${MMCTX_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mmctx/wheels}"

STEP="start"
HINT=""
step() { STEP="$1"; HINT="${2:-}"; printf '\n[mmctx setup] %s\n' "$STEP"; }
on_error() {
  local rc=$?
  printf '\n[mmctx setup] FAILED at step: %s (exit %s)\n' "$STEP" "$rc" >&2
  [ -n "$HINT" ] && printf '[mmctx setup] try: %s\n' "$HINT" >&2
  printf '[mmctx setup] re-running this script is safe; it resumes where it stopped.\n' >&2
  exit "$rc"
}
trap on_error ERR

step "checking the base interpreter ($BASE_PY)" \
  "install Python >= 3.8 with venv support (Debian: apt-get install python3-venv), or set PYTHON=/path/to/python3"
"$BASE_PY" -c 'import sys, venv; assert sys.version_info >= (3, 8), sys.version'
BASE_CUDA_TORCH="$("$BASE_PY" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null || true)"

step "creating the virtual environment $VENV" \
  "remove $VENV and run again, or check free disk space"
if [ ! -x "$VENV/bin/python" ]; then
  if [ -n "$BASE_CUDA_TORCH" ]; then
    echo "  $BASE_PY has a CUDA build of torch (CUDA $BASE_CUDA_TORCH): the venv will use it"
    "$BASE_PY" -m venv --system-site-packages "$VENV"
  else
    "$BASE_PY" -m venv "$VENV"
  fi
else
  echo "  exists"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

step "build tools (setuptools==$SETUPTOOLS_VERSION, wheel, ninja)" \
  "check that PyPI is reachable (pip config list)"
"${PIP[@]}" install -q "setuptools==$SETUPTOOLS_VERSION" wheel ninja numpy

step "torch" "pip install torch==$TORCH_VERSION inside $VENV by hand to see pip's full error"
TORCH_HAVE="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
TORCH_CUDA="$("$PY" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null || true)"
if [ -n "$TORCH_CUDA" ]; then
  echo "  keeping the CUDA build torch $TORCH_HAVE (CUDA $TORCH_CUDA)"
elif [ "${TORCH_HAVE%%+*}" = "$TORCH_VERSION" ]; then
  echo "  torch $TORCH_HAVE already installed"
else
  # pinned: a bare `torch` would pull a multi-GB CUDA build on a CPU machine
  "${PIP[@]}" install "torch==$TORCH_VERSION"
  TORCH_HAVE="$("$PY" -c 'import torch; print(torch.__version__)')"
fi
CONSTRAINTS="$VENV/mmctx-constraints.txt"
printf 'torch==%s\nsetuptools==%s\n' "$TORCH_HAVE" "$SETUPTOOLS_VERSION" > "$CONSTRAINTS"

step "mmengine 0.10.7" "pip install mmengine==0.10.7"
"${PIP[@]}" install -q -c "$CONSTRAINTS" "mmengine==0.10.7"

mmcv_ok() {
  "$PY" - <<EOF >/dev/null 2>&1
import mmcv, mmcv.ops  # mmcv.ops needs the compiled mmcv._ext
assert mmcv.__version__ == "$MMCV_VERSION", mmcv.__version__
EOF
}
step "mmcv $MMCV_VERSION with compiled ops" \
  "the build needs gcc/g++ and the Python headers (Debian: apt-get install build-essential python3-dev); on a GPU box, nvcc matching torch's CUDA"
PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEEL_DIR="$CACHE_ROOT/mmcv-$MMCV_VERSION-torch$TORCH_HAVE-$PYTAG"
if mmcv_ok; then
  echo "  mmcv $MMCV_VERSION with ops already installed"
else
  mkdir -p "$WHEEL_DIR"
  # 1) a wheel from the cache or from PIP_FIND_LINKS (pip reads that variable itself)
  if "${PIP[@]}" install -q --no-deps --no-index --find-links "$WHEEL_DIR" "mmcv==$MMCV_VERSION" 2>/dev/null \
      && mmcv_ok; then
    echo "  installed a prebuilt wheel (cache: $WHEEL_DIR, find-links: ${PIP_FIND_LINKS:-none})"
  else
    "${PIP[@]}" uninstall -q -y mmcv >/dev/null 2>&1 || true
    # 2) build once from the PyPI source archive against this torch, then cache it
    FORCE_CUDA=0
    [ -n "$TORCH_CUDA" ] && FORCE_CUDA=1
    echo "  no usable prebuilt wheel: building mmcv $MMCV_VERSION from source"
    echo "  (about 15 minutes on 2 CPU cores; longer with CUDA ops; cached in $WHEEL_DIR)"
    MMCV_WITH_OPS=1 FORCE_CUDA=$FORCE_CUDA MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "${PIP[@]}" wheel --no-build-isolation --no-deps --no-binary mmcv \
        -c "$CONSTRAINTS" "mmcv==$MMCV_VERSION" -w "$WHEEL_DIR"
    "${PIP[@]}" install -q --no-deps --no-index --find-links "$WHEEL_DIR" "mmcv==$MMCV_VERSION"
    mmcv_ok || { echo "  the freshly built mmcv does not import its ops" >&2; false; }
  fi
fi
# mmcv's own (pure-Python) dependencies
"${PIP[@]}" install -q -c "$CONSTRAINTS" "mmcv==$MMCV_VERSION"

step "mmsegmentation 1.2.2, mmdet 3.3.0, mmaction2 1.2.0" \
  "pip install -c $CONSTRAINTS -r $ROOT/requirements/stack.txt"
"${PIP[@]}" install -q -c "$CONSTRAINTS" -r "$ROOT/requirements/stack.txt"

step "mmctx (editable) and the test requirements" "pip install -e $ROOT"
"${PIP[@]}" install -q -c "$CONSTRAINTS" --no-build-isolation -e "$ROOT" -r "$ROOT/requirements/tests.txt"

step "mmaction2 1.2.0 wheel: restore the missing localizers/drn package (STACK.md §2)" \
  "$PY -m mmctx.compat.mmaction_drn --check"
"$PY" -m mmctx.compat.mmaction_drn

step "verifying the stack" "run the printed python snippet by hand to see the traceback"
"$PY" - <<'EOF'
import torch, mmengine, mmcv, mmcv.ops, mmseg, mmdet, mmaction, mmaction.models, mmctx
print(f"  torch {torch.__version__} (cuda: {torch.version.cuda}), mmengine {mmengine.__version__}, "
      f"mmcv {mmcv.__version__} (ops ok), mmseg {mmseg.__version__}, mmdet {mmdet.__version__}, "
      f"mmaction2 {mmaction.__version__}, mmctx {mmctx.__version__}")
EOF
trap - ERR
printf '\n[mmctx setup] done: activate with  source %s/bin/activate\n' "$VENV"
