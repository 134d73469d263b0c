"""The embedded default model: shipped in the package, checksum-verified, small, and ranks examples/ right."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fgresq_sdk.bundle import default_bundle_path, load_bundle

ROOT = Path(__file__).resolve().parents[1]
EXE = Path(sys.executable).parent / "fgresq-sdk"


def test_default_bundle_is_shipped_verified_and_small():
    path = default_bundle_path()
    assert path is not None, "fgresq_sdk/default_model/model.json is missing"
    bundle = load_bundle(path, cache=False)  # files are checked when read: hash each one now, uncached
    bundle.verify_all()  # raises BundleError on any sha256 mismatch
    assert bundle.verified and bundle.precision == "fp32"
    assert bundle.config["name"] == "fgresq-compact-cnn-ms2"
    assert not bundle.has("checkpoint")  # the wheel ships ONNX only
    size = sum(f.stat().st_size for f in path.iterdir() if f.is_file())
    assert size <= 30 * 2**20, size


def test_rank_examples_best_first_without_model_option():
    """examples/<group>/L<k>.png: k is the residual-artefact level (held-out photos), so L0 must rank first."""
    res = subprocess.run([str(EXE), "rank", str(ROOT / "examples"), "--group-by", "parent", "-f", "json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    groups = json.loads(res.stdout)["groups"]
    assert len(groups) >= 2
    for g in groups:
        levels = [int(Path(r["path"]).stem[1:]) for r in g["ranking"]]
        assert levels == sorted(levels), (g["name"], levels)
