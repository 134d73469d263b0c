#!/usr/bin/env bash
# The prepared GPU check: set this machine up from the carried wheels, then run bench/gpu_check.py (GPU tests +
# benchmark), everything written under $OUT.
#
# On the device machine, from the repository root, through the run tool:
#   carry: ["bench/wheels"]   (fill it first, here: bash bench/prepare_gpu_wheels.sh)
#   command: bash bench/gpu_check.sh          timeout_s: 540
# The Python part keeps inside GPU_CHECK_BUDGET seconds (default 400); setup takes ~10-40 s, step 4 ~80 s.
# Results: $OUT/gpu_check.json (everything), $OUT/gpu_table.md, $OUT/pytest_gpu.log, $OUT/gpu_check.log,
# $OUT/isa_repro.jsonl (the host CPU's training fingerprints, step 4).
# Extra arguments go to gpu_check.py (e.g. --stages env,bench-paper, --variants compile, or --cpu for a dry run).
#
# The image (Python 3.12, torch + CUDA, onnx, onnxruntime CPU, no open_clip, no TensorRT, no network) gets:
# 1. the carried wheels of the distributions it lacks (installed by name with --no-index --no-deps; what is
#    there is never replaced);
# 2. this checkout installed as a package (not editable: fgresq_sdk.export / .train are mapped from top-level
#    folders), built with the image's setuptools or the carried one;
# 3. every Python process started with PYTHONSAFEPATH=1, so the checkout's own fgresq_sdk/ folder (which has no
#    export/ or train/ inside) never shadows the installed package when pytest or a script runs from the
#    repository root. The import check below fails loudly if it still would.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$PWD/out/gpu_check}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONSAFEPATH=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/fgresq-inductor-cache}
export FGRESQ_CACHE_DIR=${FGRESQ_CACHE_DIR:-/tmp/fgresq-verify-cache}
echo "gpu_check.sh: $(date -u +%FT%TZ) on $(hostname); python: $($PY -c 'import sys; print(sys.executable, sys.version.split()[0])')"
$PY -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || echo "gpu_check.sh: Python < 3.11 ignores PYTHONSAFEPATH; the checkout may shadow the installed package"

pip_install() {  # pip install "$@" into $PY's environment; PEP 668 images need --break-system-packages
  local extra=()
  $PY -m pip install --help 2>/dev/null | grep -q -- --break-system-packages && extra+=(--break-system-packages)
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "${extra[@]}" "$@"
}

# 1. Carried wheels, for the distributions this machine lacks.
SITE=/tmp/fgresq-site
if ! $PY -m pip --version >/dev/null 2>&1; then
  echo "gpu_check.sh: no pip for $PY; using only what is installed"
elif compgen -G "bench/wheels/*.whl" >/dev/null; then
  mapfile -t missing < <($PY - bench/wheels/*.whl <<'EOF'
import importlib.metadata as md, re, sys
for path in sys.argv[1:]:
    name = re.split(r"-\d", path.rsplit("/", 1)[-1], maxsplit=1)[0]
    try:
        md.version(name)
    except md.PackageNotFoundError:
        if name.lower() != "setuptools":  # a build tool for step 2 only; never put into the image
            print(path)
EOF
)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "gpu_check.sh: installing ${#missing[@]} carried wheel(s): ${missing[*]##*/}"
    if ! pip_install "${missing[@]}"; then
      echo "gpu_check.sh: installing into the environment failed; installing under $SITE instead"
      pip_install --target "$SITE" "${missing[@]}" && export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
  else
    echo "gpu_check.sh: every carried distribution is already installed"
  fi
else
  echo "gpu_check.sh: no bench/wheels/*.whl (run bench/prepare_gpu_wheels.sh here and carry bench/wheels)"
fi

# 2. The checkout as an installed package (skipped where it already is one, e.g. an editable dev install).
if $PY -c "import fgresq_sdk.export, fgresq_sdk.train" >/dev/null 2>&1; then
  echo "gpu_check.sh: fgresq_sdk is installed: $($PY -c 'import fgresq_sdk; print(fgresq_sdk.__file__)')"
else
  BUILD_SITE=/tmp/fgresq-build-site  # setuptools for the build only, when the image has none or an old one
  saved_pythonpath=${PYTHONPATH:-}
  if ! $PY -c "import setuptools, sys; sys.exit(tuple(map(int, setuptools.__version__.split('.')[:2])) < (70, 1))" 2>/dev/null \
     && compgen -G "bench/wheels/setuptools-*.whl" >/dev/null; then
    rm -rf "$BUILD_SITE" && pip_install --target "$BUILD_SITE" bench/wheels/setuptools-*.whl
    export PYTHONPATH="$BUILD_SITE${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if pip_install --no-build-isolation --force-reinstall .; then
    echo "gpu_check.sh: installed this checkout"
  elif pip_install --no-build-isolation --target "$SITE" .; then
    echo "gpu_check.sh: installed this checkout under $SITE"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check.sh: pip could not install this checkout; assembling the package under $SITE/pkg (no CLI script)"
    rm -rf "$SITE/pkg" && mkdir -p "$SITE/pkg"
    cp -r fgresq_sdk "$SITE/pkg/fgresq_sdk" && cp -r export "$SITE/pkg/fgresq_sdk/export" \
      && cp -r train "$SITE/pkg/fgresq_sdk/train"
    export PYTHONPATH="$SITE/pkg${PYTHONPATH:+:$PYTHONPATH}"
  fi
  if [ "${PYTHONPATH:-}" = "$BUILD_SITE${saved_pythonpath:+:$saved_pythonpath}" ]; then
    export PYTHONPATH="$saved_pythonpath"  # the build's setuptools is not for the check itself
  fi
  case ":${PYTHONPATH:-}:" in *":$SITE:"*) export PATH="$SITE/bin:$PATH";; esac
fi

# The import check, from the repository root, as pytest and the stages will import.
$PY - "$REPO" <<'EOF' || echo "gpu_check.sh: import check failed (the stages will record why)"
import importlib.util, os, sys
repo = os.path.realpath(sys.argv[1])
import fgresq_sdk, fgresq_sdk.export, fgresq_sdk.train
where = os.path.realpath(fgresq_sdk.__file__)
editable = os.path.realpath(fgresq_sdk.export.__file__).startswith(repo + os.sep)
if where.startswith(os.path.join(repo, "fgresq_sdk") + os.sep) and not editable:
    sys.exit(f"fgresq_sdk comes from the checkout ({where}) although it is not installed from it")
have = {m: importlib.util.find_spec(m) is not None
        for m in ("torch", "open_clip", "torchvision", "onnx", "onnxruntime", "typer", "pytest", "skimage", "tensorrt")}
print("fgresq_sdk", fgresq_sdk.__version__, "from", where, "|", " ".join(f"{k}={'yes' if v else 'NO'}" for k, v in have.items()))
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

# 3. The check itself.
$PY bench/gpu_check.py --out "$OUT" --budget "${GPU_CHECK_BUDGET:-400}" "$@"
rc=$?

# 4. The host CPU's training fingerprints (bench/isa_repro.py: unpinned, and the two portable pin sets), ~80 s: a
#    GPU machine is another CPU type for free, and an AMD host would answer whether the portable kernels give the
#    same weights on both vendors (the hashes to compare with are in isa_repro.py). GPU_CHECK_ISA=0 skips it.
if [ "${GPU_CHECK_ISA:-1}" != 0 ]; then
  for pins in "" cnr avx2-cnr; do
    timeout 60 $PY bench/isa_repro.py ${pins:+--pins $pins} >> "$OUT/isa_repro.jsonl" \
      || echo "gpu_check.sh: isa_repro ${pins:-unpinned} failed or took over 60 s"
  done
  $PY -c 'import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    print("isa_repro:", r["sha256"][:16], r["pins"] or "unpinned", r["cpu"], r["seconds"], "s")' "$OUT/isa_repro.jsonl" || true
fi
echo "gpu_check.sh: done (exit $rc); files in $OUT:"; ls -l "$OUT"
exit $rc
