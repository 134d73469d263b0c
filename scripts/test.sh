#!/usr/bin/env bash
# The project's test command (README): make .venv with the dev extras, then run the test suite.
# Idempotent: an existing .venv is reused and only what is missing gets installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# System packages the tests use: headless Chromium (HTML report screenshots) and cmake for the C/C++ library
# (cpp_bindings/build_and_test.sh also installs what it misses).
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v cmake >/dev/null || need+=(cmake)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null \
    || echo "scripts/test.sh: could not install ${need[*]}; the tests that need them will say so" >&2
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
# torch/torchvision pinned to the releases open_clip's torchvision import works with (see DEVELOPERS.md).
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/pip install -q -e ".[dev]"
# Two pytest-xdist workers where the machine has two or more CPUs (FGRESQ_TEST_WORKERS=0: one process; =N: N
# workers). tests/conftest.py keeps each module's tests on one worker and the modules that build this checkout or
# count processes and /dev/shm entries on one together. Clean-clone CI on an Intel Xeon family 6 model 167, 2 cores:
# 8 min 48 s and 8 min 25 s against 9 min 58 s in one process (DEVELOPERS.md, Tests).
workers=${FGRESQ_TEST_WORKERS:-$([ "$(nproc)" -ge 2 ] && echo 2 || echo 0)}
exec .venv/bin/pytest -n "$workers" --dist loadgroup "$@"
