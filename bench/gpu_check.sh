#!/usr/bin/env bash
# The prepared GPU check (issue 6): set up this machine from the carried wheels, then run
# bench/gpu_check.py (GPU tests + throughput benchmark), everything written under $OUT.
#
# On the device machine, from the repository root, through the run tool:
#   carry: ["bench/wheels"]   (fill it first, here: bash bench/prepare_gpu_wheels.sh)
#   command: bash bench/gpu_check.sh          timeout_s: 540
# It keeps itself inside GPU_CHECK_BUDGET seconds (default 360) for the Python part; setup takes ~20 s.
# Results: $OUT/gpu_check.json (everything), $OUT/pytest_gpu.log, $OUT/gpu_check.log.
# Extra arguments go to gpu_check.py (e.g. --stages env,bench-paper, or --cpu for a dry run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out/gpu_check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
echo "gpu_check.sh: $(date -u +%FT%TZ) on $(hostname); python: $($PY -c 'import sys; print(sys.executable, sys.version.split()[0])')"

# 1. Packages this machine lacks (open_clip_torch, ftfy, wcwidth), from carried wheels: no index here.
SITE=/tmp/fgresq-site
if compgen -G "bench/wheels/*.whl" >/dev/null; then
  if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" bench/wheels/*.whl; then
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check.sh: installing the carried wheels failed; going on with what is installed"
  fi
else
  echo "gpu_check.sh: no bench/wheels/*.whl (run bench/prepare_gpu_wheels.sh here and carry bench/wheels)"
fi

# 2. The repository itself (fgresq_sdk.export / fgresq_sdk.train are mapped from top-level folders, so it
#    needs an install). Editable, no deps, no build isolation (no index to fetch setuptools from).
if ! $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . ; then
  echo "gpu_check.sh: editable install failed; assembling the package under $SITE/pkg instead"
  rm -rf "$SITE/pkg" && mkdir -p "$SITE/pkg"
  cp -r fgresq_sdk "$SITE/pkg/fgresq_sdk"
  cp -r export "$SITE/pkg/fgresq_sdk/export"
  cp -r train "$SITE/pkg/fgresq_sdk/train"
  export PYTHONPATH="$SITE/pkg:$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY -c "import fgresq_sdk, fgresq_sdk.export, open_clip; print('fgresq_sdk', fgresq_sdk.__version__, 'from', fgresq_sdk.__file__, '| open_clip', open_clip.__version__)" \
  || echo "gpu_check.sh: import check failed (the stages will record why)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# 3. The check itself.
$PY bench/gpu_check.py --out "$OUT" --budget "${GPU_CHECK_BUDGET:-360}" "$@"
rc=$?
echo "gpu_check.sh: done (exit $rc); files in $OUT:"; ls -l "$OUT"
exit $rc
