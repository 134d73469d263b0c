"""pytest-benchmark suites (not part of the default test run: pytest's testpaths is tests/).

Run:  .venv/bin/pytest bench/ --benchmark-only [--benchmark-json out.json]
Model: $FGRESQ_BENCH_MODEL (a bundle folder), else the embedded default model.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from fgresq_sdk.bench import Variant, variant_bundle
from fgresq_sdk.bundle import default_bundle_path, load_bundle
from fgresq_sdk.photos import synthetic_photos


@pytest.fixture(scope="session")
def bench_bundle():
    root = os.environ.get("FGRESQ_BENCH_MODEL") or default_bundle_path()
    if root is None:
        pytest.skip("no model: set FGRESQ_BENCH_MODEL to a bundle folder")
    return load_bundle(root)


@pytest.fixture(scope="session")
def bench_images(tmp_path_factory) -> list[Path]:
    return synthetic_photos(64, tmp_path_factory.mktemp("bench-images"))


@pytest.fixture(scope="session")
def int8_bundle(bench_bundle, tmp_path_factory):
    return variant_bundle(bench_bundle, Variant("onnxruntime", "int8").format, tmp_path_factory.mktemp("int8"))


@pytest.fixture(scope="session")
def batch(bench_bundle):
    s = int(bench_bundle.preprocess["size"])
    return np.random.default_rng(0).normal(size=(8, 3, s, s)).astype(np.float32)
