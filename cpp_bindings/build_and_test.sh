#!/usr/bin/env bash
# Build cpp_bindings (library, examples, tests) and run its ctest suite: the single entry point CI uses.
#
#   cpp_bindings/build_and_test.sh
#
# Steps: ONNX Runtime headers (fetch_ort_headers.sh, unless FGRESQ_ORT_INCLUDE_DIR is set), cmake configure +
# build, ctest.
# Env: FGRESQ_PYTHON   python with fgresq_sdk + torch + scikit-image (default: the repo's .venv)
#      FGRESQ_BUILD_DIR build folder (default: cpp_bindings/build)
#      FGRESQ_JOBS      parallel build jobs (default: 2)
#      FGRESQ_ORT_INCLUDE_DIR / FGRESQ_ORT_LIBRARY  your own ONNX Runtime (skips the header download)
# Exit status: ctest's; 77 when the build cannot be attempted here (no cmake/compiler, headers not
# downloadable); the reason is on the last line starting with "SKIP:".
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
build="${FGRESQ_BUILD_DIR:-$here/build}"
jobs="${FGRESQ_JOBS:-2}"
python="${FGRESQ_PYTHON:-$repo/.venv/bin/python}"
start=$(date +%s)

skip() { echo "SKIP: $*"; exit 77; }

command -v cmake >/dev/null || skip "cmake not found"
command -v ctest >/dev/null || skip "ctest not found"
cxx="${CXX:-$(command -v c++ || command -v g++ || command -v clang++ || true)}"
[ -n "$cxx" ] || skip "no C++ compiler found (c++, g++ or clang++)"
[ -x "$python" ] || python="$(command -v python3 || true)"
[ -n "$python" ] || skip "no python for the test data"

cmake_args=(-S "$here" -B "$build" -DCMAKE_BUILD_TYPE=Release "-DFGRESQ_PYTHON=$python" "-DCMAKE_CXX_COMPILER=$cxx")
if [ -n "${FGRESQ_ORT_INCLUDE_DIR:-}" ]; then
  cmake_args+=("-DFGRESQ_ORT_INCLUDE_DIR=$FGRESQ_ORT_INCLUDE_DIR")
else
  inc="$(bash "$here/fetch_ort_headers.sh" "$build/_deps/ort" | tail -n1)" ||
    skip "ONNX Runtime headers could not be downloaded (fetch_ort_headers.sh failed; set FGRESQ_ORT_INCLUDE_DIR)"
  [ -f "$inc/onnxruntime_cxx_api.h" ] || skip "ONNX Runtime headers not found after download"
  cmake_args+=("-DFGRESQ_ORT_INCLUDE_DIR=$inc")
fi
[ -n "${FGRESQ_ORT_LIBRARY:-}" ] && cmake_args+=("-DFGRESQ_ORT_LIBRARY=$FGRESQ_ORT_LIBRARY")

cmake "${cmake_args[@]}"
cmake --build "$build" -j "$jobs"
status=0
(cd "$build" && ctest --output-on-failure) || status=$?
echo "build_and_test: finished in $(( $(date +%s) - start )) s (ctest status $status)"
exit $status
