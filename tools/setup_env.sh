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
#                      there (or in its torch-<version>/ subfolder) is used if it
#                      imports against the venv's torch.
#   MMCTX_WHEEL_CACHE  where a self-built mmcv wheel is cached
#                      (default: ${XDG_CACHE_HOME:-~/.cache}/mmctx/wheels).
#   MMCTX_VENV         venv location (default: <repo>/.venv).
#
# Idempotent: every step checks what is already there; a second run takes seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${MMCTX_VENV:-$ROOT/.venv}"
BASE_PY="${PYTHON:-python3}"
# PyPI's torch 2.14.1 (a CUDA build that also runs on CPUs) pairs with torchvision 0.29.1,
# which mmpretrain imports; the CPU-only torch builds have no loadable torchvision on PyPI
TORCH_VERSION="2.14.1"
TORCHVISION_VERSION="0.29.1"
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

step "torch $TORCH_VERSION and torchvision $TORCHVISION_VERSION" \
  "pip install torch==$TORCH_VERSION torchvision==$TORCHVISION_VERSION inside $VENV by hand to see pip's full error"
TORCH_HAVE="$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
TV_HAVE="$("$PY" -c 'import torchvision; print(torchvision.__version__)' 2>/dev/null || true)"
if [ -n "$BASE_CUDA_TORCH" ] && [ -n "$TORCH_HAVE" ]; then
  echo "  keeping the base interpreter's CUDA build torch $TORCH_HAVE"
  if [ -z "$TV_HAVE" ]; then
    # the torchvision release built for that torch (pip picks it by torch's pin)
    "${PIP[@]}" install "torch==${TORCH_HAVE%%+*}" torchvision
  fi
elif [ "${TORCH_HAVE%%+*}" = "$TORCH_VERSION" ] && [ "${TV_HAVE%%+*}" = "$TORCHVISION_VERSION" ]; then
  echo "  torch $TORCH_HAVE and torchvision $TV_HAVE already installed"
else
  # pinned together: a bare `torch` could pull another build than torchvision's
  "${PIP[@]}" install "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
fi
TORCH_HAVE="$("$PY" -c 'import torch; print(torch.__version__)')"
TORCH_CUDA="$("$PY" -c 'import torch; print(torch.version.cuda or "")' 2>/dev/null || true)"
"$PY" -c 'import torchvision.ops' || { echo "  torchvision does not load against torch $TORCH_HAVE" >&2; false; }
CONSTRAINTS="$VENV/mmctx-constraints.txt"
# pin what is installed, by its package version (torch.__version__ may carry a "+cu130"
# label that its wheel's metadata does not)
PINS="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"), m.version("torchvision"))')"
printf 'torch==%s\ntorchvision==%s\nsetuptools==%s\n' ${PINS% *} ${PINS#* } \
  "$SETUPTOOLS_VERSION" > "$CONSTRAINTS"

step "mmengine 0.10.7" "pip install mmengine==0.10.7"
"${PIP[@]}" install -q -c "$CONSTRAINTS" "mmengine==0.10.7"

mmcv_ok() {
  # mmcv.ops needs the compiled mmcv._ext; an _ext built for another torch may still
  # import, so a few ops also run
  "$PY" - <<EOF >/dev/null 2>&1
import torch, mmcv
from mmcv.ops import DeformConv2dPack, nms, roi_align
assert mmcv.__version__ == "$MMCV_VERSION", mmcv.__version__
boxes = torch.tensor([[0., 0., 4., 4.], [0., 0., 4., 4.1]])
nms(boxes, torch.tensor([0.9, 0.8]), 0.5)
roi_align(torch.rand(1, 2, 8, 8), torch.tensor([[0., 0., 0., 4., 4.]]), (2, 2))
DeformConv2dPack(2, 2, 3, padding=1)(torch.rand(1, 2, 5, 5))
EOF
}
# the torch an installed mmcv was set up for (a changed torch means another mmcv)
MMCV_STAMP="$VENV/mmctx-mmcv-built-for-torch.txt"
step "mmcv $MMCV_VERSION with compiled ops" \
  "the build needs gcc/g++ and the Python headers (Debian: apt-get install build-essential python3-dev); on a GPU box, nvcc matching torch's CUDA"
PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')"
WHEEL_DIR="$CACHE_ROOT/mmcv-$MMCV_VERSION-torch$TORCH_HAVE-$PYTAG"
# the wheelhouses to try, one at a time: the cache, then each PIP_FIND_LINKS entry's
# torch-<version>/ subfolder and the entry itself (an mmcv built for another torch fails
# mmcv_ok and is skipped)
candidates() {
  echo "$WHEEL_DIR"
  for d in ${PIP_FIND_LINKS:-}; do
    d="${d#file://}"
    [ -d "$d/torch-${TORCH_HAVE%%+*}" ] && echo "$d/torch-${TORCH_HAVE%%+*}"
    [ -d "$d" ] && echo "$d"
  done
}
if [ "$(cat "$MMCV_STAMP" 2>/dev/null)" = "$TORCH_HAVE" ] && mmcv_ok; then
  echo "  mmcv $MMCV_VERSION with ops already installed"
else
  rm -f "$MMCV_STAMP"
  mkdir -p "$WHEEL_DIR"
  FOUND=""
  for d in $(candidates); do
    # 1) a prebuilt wheel from this wheelhouse only
    if PIP_FIND_LINKS="" "${PIP[@]}" install -q --no-deps --no-index --force-reinstall \
        --find-links "$d" "mmcv==$MMCV_VERSION" >/dev/null 2>&1 && mmcv_ok; then
      echo "  installed a prebuilt wheel from $d"
      FOUND=1
      break
    fi
    "${PIP[@]}" uninstall -q -y mmcv >/dev/null 2>&1 || true
  done
  if [ -z "$FOUND" ]; then
    # 2) build once from the PyPI source archive against this torch, then cache it.
    # torch >= 2.14 headers need C++20, and mmcv 2.1.0's setup.py passes -std=c++14/17:
    # the archive is patched to -std=c++20 (STACK notes in the README).
    FORCE_CUDA=0
    [ -n "$TORCH_CUDA" ] && "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' \
      && FORCE_CUDA=1
    echo "  no usable prebuilt wheel: building mmcv $MMCV_VERSION from source"
    echo "  (about 35 minutes on 2 CPU cores; longer with CUDA ops; cached in $WHEEL_DIR)"
    SRC="$(mktemp -d)"
    PIP_FIND_LINKS="" "${PIP[@]}" download -q --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$SRC"
    tar xzf "$SRC/mmcv-$MMCV_VERSION.tar.gz" -C "$SRC"
    sed -i "s/'-std=c++17'/'-std=c++20'/g; s/'-std=c++14'/'-std=c++20'/g" "$SRC/mmcv-$MMCV_VERSION/setup.py"
    MMCV_WITH_OPS=1 FORCE_CUDA=$FORCE_CUDA MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
      "${PIP[@]}" wheel --no-cache-dir --no-build-isolation --no-deps \
        -c "$CONSTRAINTS" "$SRC/mmcv-$MMCV_VERSION" -w "$WHEEL_DIR"
    rm -rf "$SRC"
    PIP_FIND_LINKS="" "${PIP[@]}" install -q --no-deps --no-index --force-reinstall \
      --find-links "$WHEEL_DIR" "mmcv==$MMCV_VERSION"
    mmcv_ok || { echo "  the freshly built mmcv does not import its ops" >&2; false; }
  fi
  echo "$TORCH_HAVE" > "$MMCV_STAMP"
fi
# mmcv's own (pure-Python) dependencies
"${PIP[@]}" install -q -c "$CONSTRAINTS" "mmcv==$MMCV_VERSION"

step "mmsegmentation 1.2.2, mmdet 3.3.0, mmaction2 1.2.0, mmpretrain 1.2.0" \
  "pip install -c $CONSTRAINTS -r $ROOT/requirements/stack.txt"
"${PIP[@]}" install -q -c "$CONSTRAINTS" -r "$ROOT/requirements/stack.txt"

step "mmctx (editable, with the deploy extra: ONNX export) and the test requirements" \
  "pip install -e \"${ROOT}[deploy]\""
"${PIP[@]}" install -q -c "$CONSTRAINTS" --no-build-isolation -e "${ROOT}[deploy]" -r "$ROOT/requirements/tests.txt"

step "mmaction2 1.2.0 wheel: restore the missing localizers/drn package (STACK.md §2)" \
  "$PY -m mmctx.compat.mmaction_drn --check"
"$PY" -m mmctx.compat.mmaction_drn

step "verifying the stack" "run the printed python snippet by hand to see the traceback"
"$PY" - <<'EOF'
import torch, torchvision, torchvision.ops, mmengine, mmcv, mmcv.ops, mmseg, mmdet
import mmaction, mmaction.models, mmpretrain, mmpretrain.models, mmctx
import onnx, onnxruntime, onnxscript  # the deploy extra (ONNX export)
print(f"  torch {torch.__version__} (cuda: {torch.version.cuda}), torchvision "
      f"{torchvision.__version__}, mmengine {mmengine.__version__}, mmcv {mmcv.__version__} "
      f"(ops ok), mmseg {mmseg.__version__}, mmdet {mmdet.__version__}, mmaction2 "
      f"{mmaction.__version__}, mmpretrain {mmpretrain.__version__}, mmctx {mmctx.__version__}, "
      f"onnx {onnx.__version__}, onnxruntime {onnxruntime.__version__}")
EOF
trap - ERR
printf '\n[mmctx setup] done: activate with  source %s/bin/activate\n' "$VENV"
