"""The C/C++ bindings (cpp_bindings/): build them and run their ctest suite through build_and_test.sh.

The suite compares the C API with this Python SDK on the same pixels and on the pixels of the same image files
(scores, preprocessing, ranking, comparison), checks error paths and concurrent use, and runs the examples.
Skipped only when the build cannot be attempted here (no cmake or C++ compiler, or the ONNX Runtime
headers cannot be downloaded): build_and_test.sh then exits 77 with a "SKIP: reason" line.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "cpp_bindings" / "build_and_test.sh"
SKIP_STATUS = 77


def test_cpp_bindings_build_and_ctest():
    if shutil.which("bash") is None:
        pytest.skip("bash not found")
    if shutil.which("cmake") is None:
        pytest.skip("cmake not found")
    if not any(shutil.which(c) for c in (os.environ.get("CXX") or "c++", "g++", "clang++")):
        pytest.skip("no C++ compiler found")
    env = dict(os.environ, FGRESQ_PYTHON=sys.executable)
    res = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    out = res.stdout + res.stderr
    if res.returncode == SKIP_STATUS:
        reasons = [line[5:].strip() for line in res.stdout.splitlines() if line.startswith("SKIP:")]
        pytest.skip(reasons[-1] if reasons else "build_and_test.sh could not build here")
    assert res.returncode == 0, f"cpp_bindings/build_and_test.sh failed (status {res.returncode}):\n{out[-8000:]}"
    assert "100% tests passed" in out, out[-8000:]
