#!/usr/bin/env bash
# The project's test command (README): make .venv with the dev extras, then run the test suite.
# Idempotent: an existing .venv is reused and only what is missing gets installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
fi
# torch/torchvision pinned to the releases open_clip's torchvision import works with (see DEVELOPERS.md).
.venv/bin/pip install -q "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/pip install -q -e ".[dev]"
exec .venv/bin/pytest "$@"
