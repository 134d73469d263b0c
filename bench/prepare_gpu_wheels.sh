#!/usr/bin/env bash
# Fill bench/wheels/ (git-ignored) with the wheels bench/gpu_check.sh may need on the GPU machine.
#
# That machine has no network. Its image (as last described): Python 3.12, torch 2.11 with CUDA 13, onnx,
# onnxruntime (CPU); no open_clip, no TensorRT. Anything else may or may not be there, so every pure-Python
# or small package the SDK, open_clip's import and the tests need is carried, and gpu_check.sh installs only
# the distributions the machine lacks (by name; an installed one is never replaced).
#
# Versions: those of this checkout's .venv, i.e. what scripts/test.sh installs and CI runs (an error if the
# .venv lacks one: run scripts/test.sh first). Exception: torchvision must match the *device's* torch
# (torch 2.11 → torchvision 0.26), not CI's; set FGRESQ_GPU_TORCHVISION if the image changes.
# Binary wheels are fetched for CPython 3.12 manylinux x86_64.
#
# Not carried: TensorRT and onnxruntime-gpu (hundreds of MB to GBs; the carry limit is 64 MiB together with
# the working tree), numpy (the image's onnx already needs it), scikit-image + scipy (~50 MB; the GPU tests
# fall back to synthetic photos without it). Add names with FGRESQ_EXTRA_WHEELS="name==ver ..." if they fit.
#
# Usage:  bash bench/prepare_gpu_wheels.sh      (then carry ["bench/wheels"] to bash bench/gpu_check.sh)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-../.venv/bin/python}
[ -x "$PY" ] || { echo "prepare_gpu_wheels.sh: no $PY (run scripts/test.sh first: the pins come from its .venv)" >&2; exit 2; }
TORCHVISION=${FGRESQ_GPU_TORCHVISION:-0.26.0}
LIMIT_MIB=${FGRESQ_WHEELS_LIMIT_MIB:-44}   # leaves room for the working tree within the 64 MiB carry limit
names=(open_clip_torch ftfy wcwidth regex tqdm safetensors setuptools
       typer click rich shellingham markdown-it-py mdurl pygments typing_extensions
       pytest pluggy iniconfig packaging pillow)
pkgs=()
for name in "${names[@]}"; do
  v=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name" 2>/dev/null) || {
    echo "prepare_gpu_wheels.sh: $name is not installed in $PY's environment; cannot pin it" >&2; exit 2; }
  pkgs+=("$name==$v")
done
pkgs+=("torchvision==$TORCHVISION")
# shellcheck disable=SC2206
pkgs+=(${FGRESQ_EXTRA_WHEELS:-})
rm -rf wheels && mkdir -p wheels
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d wheels "${pkgs[@]}"
ls -l wheels
size=$(du -sm wheels | cut -f1)
echo "bench/wheels: ${size} MiB (limit ${LIMIT_MIB} MiB)"
if [ "$size" -gt "$LIMIT_MIB" ]; then
  echo "prepare_gpu_wheels.sh: bench/wheels is over ${LIMIT_MIB} MiB; drop FGRESQ_EXTRA_WHEELS or raise the limit" >&2
  exit 1
fi
