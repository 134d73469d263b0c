"""Bundles are checksum-verified; broken ones are refused naming the file."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fgresq_sdk.bundle import load_bundle
from fgresq_sdk.errors import BundleError

EXE = Path(sys.executable).parent / "fgresq-sdk"


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def test_manifest_lists_files_with_sha256(tiny_bundle):
    b = load_bundle(tiny_bundle)
    files = b.manifest["files"]
    assert {"encoder", "compare_head", "heads", "checkpoint"} <= set(files)
    assert all(len(v["sha256"]) == 64 for v in files.values())
    assert b.manifest["opset"] == 17 and b.preprocess["size"] == 224
    assert b.config["name"] == "fgresq-vit-tiny"


def _flip_byte(path: Path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("role_file", ["encoder.onnx", "heads.npz", "compare_head.onnx"])
def test_corrupted_file_is_refused_by_name(bundle_copy, role_file):
    _flip_byte(bundle_copy / role_file)
    with pytest.raises(BundleError, match=f"{role_file}: sha256 mismatch"):
        load_bundle(bundle_copy)


def test_missing_file_and_bad_manifest(bundle_copy):
    (bundle_copy / "heads.npz").unlink()
    with pytest.raises(BundleError, match="heads.npz: file listed in model.json as 'heads' is missing"):
        load_bundle(bundle_copy)
    (bundle_copy / "model.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)


def test_newer_format_is_refused(bundle_copy):
    m = json.loads((bundle_copy / "model.json").read_text())
    m["format_version"] = 99
    (bundle_copy / "model.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="newer than this SDK supports"):
        load_bundle(bundle_copy)


def test_cli_reports_corruption_in_one_line(bundle_copy, photo_paths):
    _flip_byte(bundle_copy / "encoder.onnx")
    res = subprocess.run([str(EXE), "score", str(photo_paths[0]), "--model", str(bundle_copy), "-f", "json"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "encoder.onnx: sha256 mismatch" in lines[0]


def test_export_refuses_to_overwrite_and_reexports_from_bundle(tiny_bundle, tmp_path):
    out = tmp_path / "re"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = subprocess.run([str(EXE), "export", "--checkpoint", str(tiny_bundle), "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "not empty" in res.stderr
    assert (out / "keep.txt").read_text() == "mine"
    out2 = tmp_path / "re2"
    res = subprocess.run([str(EXE), "export", "--checkpoint", str(tiny_bundle / "model.safetensors"), "--out", str(out2)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    a, b = load_bundle(tiny_bundle), load_bundle(out2)
    assert a.manifest["files"]["heads"]["sha256"] == b.manifest["files"]["heads"]["sha256"]
