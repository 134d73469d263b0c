"""Two pytest-xdist workers (`bash scripts/test.sh` on two or more CPUs) keep each module's tests on one worker and the
serial modules (tests/conftest.py, SERIAL_MODULES) together on one.

Why a test: the grouping failed silently for as long as it existed (xdist_group marks that never reached the
scheduler; tests/conftest.py), and the only symptom was test_serve's SIGINT check failing now and then, when the other
worker's module server happened to hold shared memory."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("xdist")

TESTS = Path(__file__).parent
SERIAL = ["test_serve.py::test_tensorrt_plan_config_validates",
          "test_serve.py::test_serve_without_the_extra_names_it",
          "test_batch.py::test_help"]
OTHER = ["test_ranking.py::test_bradley_terry_recovers_known_strengths",
         "test_ranking.py::test_certain_outcomes_stay_finite_and_converge",
         "test_ranking.py::test_equal_items_get_equal_strengths", "test_ranking.py::test_fit_needs_a_prior"]


def test_two_workers_keep_a_module_and_the_serial_modules_each_on_one_worker():
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}  # this may run on a worker
    res = subprocess.run([sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-v",
                          "-p", "no:cacheprovider", *(f"tests/{t}" for t in SERIAL + OTHER)],
                         capture_output=True, text=True, cwd=TESTS.parent, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    worker = dict((m.group(2), m.group(1)) for m in
                  re.finditer(r"^\[(gw\d+)\] \[ *\d+%\] (?:PASSED|SKIPPED) tests/(\S+)", res.stdout, re.M))
    assert set(worker) == set(SERIAL + OTHER), res.stdout[-3000:]
    assert len({worker[t] for t in SERIAL}) == 1, f"serial modules split over workers: {worker}"
    assert len({worker[t] for t in OTHER}) == 1, f"one module split over workers: {worker}"
