#!/usr/bin/env bash
# Fill bench/wheels/ (git-ignored) with the Python packages the GPU machine lacks, for gpu_check.sh.
#
# That machine has no package index. Its image already holds torch (CUDA), torchvision, timm, regex,
# huggingface_hub, safetensors, tqdm, onnx, onnxruntime (CPU), typer, pytest and scikit-image; it lacks
# open_clip_torch and ftfy (+ wcwidth). Those are pure-Python wheels, so one download serves any
# CPython 3. Versions are this checkout's .venv's, so the device runs what the tests here ran.
#
# TensorRT and onnxruntime-gpu are not fetched: their wheels (hundreds of MB to GBs) exceed what can be
# carried (64 MiB per call with the working tree). Add names with FGRESQ_EXTRA_WHEELS="name==ver ..."
# if a smaller set ever fits; gpu_check skips those stages with a reason when they are absent.
#
# Usage:  bash bench/prepare_gpu_wheels.sh
# Then on the device (the run tool): carry ["bench/wheels"], command "bash bench/gpu_check.sh".
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-../.venv/bin/python}
[ -x "$PY" ] || PY=python3
ver() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" 2>/dev/null || true; }
pkgs=()
for name in open_clip_torch ftfy wcwidth; do
  v=$(ver "$name")
  pkgs+=("$name${v:+==$v}")
done
# shellcheck disable=SC2206
pkgs+=(${FGRESQ_EXTRA_WHEELS:-})
rm -rf wheels && mkdir -p wheels
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d wheels "${pkgs[@]}"
ls -l wheels
du -sh wheels
