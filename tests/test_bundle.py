"""Bundles: validated manifests, files verified when opened (once), and writes that only replace bundles."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fgresq_sdk.bundle import load_bundle
from fgresq_sdk.errors import BundleError
from fgresq_sdk.verify_cache import VerifyCache

EXE = Path(sys.executable).parent / "fgresq-sdk"


@pytest.fixture()
def bundle_copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, dst)
    return dst


def _manifest(root: Path) -> dict:
    return json.loads((root / "model.json").read_text())


def _write_manifest(root: Path, m: dict) -> None:
    (root / "model.json").write_text(json.dumps(m))


def test_manifest_lists_files_with_sha256(tiny_bundle):
    b = load_bundle(tiny_bundle)
    files = b.manifest["files"]
    assert set(files) == {"encoder", "heads", "checkpoint"}  # no compare_head.onnx: heads.npz is the one head
    assert all(len(v["sha256"]) == 64 for v in files.values())
    assert b.manifest["opset"] == 17 and b.preprocess["size"] == 224
    assert b.config["name"] == "fgresq-vit-tiny"


def _flip_byte(path: Path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("role_file", ["encoder.onnx", "heads.npz"])
def test_corrupted_file_is_refused_by_name(bundle_copy, role_file):
    from fgresq_sdk.scorer import Scorer

    _flip_byte(bundle_copy / role_file)
    with pytest.raises(BundleError, match=f"{role_file}: sha256 mismatch"):
        Scorer(bundle_copy)
    with pytest.raises(BundleError, match=f"{role_file}: sha256 mismatch"):
        load_bundle(bundle_copy).verify_all()


def test_onnxruntime_never_reads_the_checkpoint(bundle_copy, photo_paths):
    """A broken checkpoint does not stop ONNX Runtime (which never opens it), but stops the torch backend."""
    from fgresq_sdk.scorer import Scorer

    _flip_byte(bundle_copy / "model.safetensors")
    s = Scorer(bundle_copy, backend="onnxruntime")
    assert 0 < s.score([photo_paths[0]])[0] < 1
    assert "checkpoint" not in s.bundle.verified_roles and "encoder" in s.bundle.verified_roles
    with pytest.raises(BundleError, match="model.safetensors: sha256 mismatch"):
        Scorer(bundle_copy, backend="torch")


def test_missing_file_and_bad_manifest(bundle_copy):
    (bundle_copy / "heads.npz").unlink()
    with pytest.raises(BundleError, match="heads.npz: file listed in model.json as 'heads' is missing"):
        load_bundle(bundle_copy)
    (bundle_copy / "model.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(bundle_copy)


def test_newer_format_is_refused(bundle_copy):
    m = _manifest(bundle_copy)
    m["format_version"] = 99
    _write_manifest(bundle_copy, m)
    with pytest.raises(BundleError, match="newer than this SDK supports"):
        load_bundle(bundle_copy)


def _set(m: dict, dotted: str, value) -> dict:
    *path, last = dotted.split(".")
    d = m
    for k in path:
        d = d[k]
    d[last] = value
    return m


HOSTILE = [
    ("files.heads.path", "../x.npz", "leaves the bundle"),
    ("files.heads.path", "/etc/passwd", "not a relative path"),
    ("files.heads.path", "sub/../../x.npz", "leaves the bundle"),
    ("files.heads.path", "", "no 'path' string"),
    ("files.heads.path", 7, "no 'path' string"),
    ("files.heads", "heads.npz", "is not an object"),
    ("files.heads.sha256", "abc", "no valid sha256"),
    ("files.heads.bytes", -1, "'bytes'"),
    ("format_version", "1", "format_version must be an integer"),
    ("format_version", 1.5, "format_version must be an integer"),
    ("format_version", True, "format_version must be an integer"),
    ("format_version", 0, "unknown format_version 0"),
    ("files", [], "no 'files' table"),
    ("preprocess", "224", "no 'preprocess' object"),
    ("preprocess.size", 0, "positive integer"),
    ("preprocess.mean", [0.5], "list of 3 numbers"),
    ("preprocess.resize", {"method": "lanczos", "size": [224, 224]}, "lanczos"),
    ("preprocess.crop", {"method": "center", "size": [300, 300]}, "crop"),
    ("score_scale", 0, "score_scale must be a positive number"),
]


@pytest.mark.parametrize("key,value,message", HOSTILE, ids=[f"{k}={v!r}" for k, v, _ in HOSTILE])
def test_hostile_or_broken_manifest_is_one_bundle_error(bundle_copy, key, value, message):
    (bundle_copy.parent / "x.npz").write_bytes((bundle_copy / "heads.npz").read_bytes())
    _write_manifest(bundle_copy, _set(_manifest(bundle_copy), key, value))
    with pytest.raises(BundleError, match=message) as info:
        load_bundle(bundle_copy)
    assert "\n" not in str(info.value)


def test_missing_required_role(bundle_copy):
    m = _manifest(bundle_copy)
    del m["files"]["encoder"]
    _write_manifest(bundle_copy, m)
    with pytest.raises(BundleError, match="lists no 'encoder' file"):
        load_bundle(bundle_copy)


def test_symlink_leading_out_of_the_bundle_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "outside.npz"
    shutil.move(bundle_copy / "heads.npz", outside)
    (bundle_copy / "heads.npz").symlink_to(outside)
    with pytest.raises(BundleError, match="resolves outside the bundle"):
        load_bundle(bundle_copy)


def test_hostile_manifest_through_the_cli_is_one_line_exit_2(bundle_copy, photo_paths):
    _write_manifest(bundle_copy, _set(_manifest(bundle_copy), "format_version", "one"))
    res = subprocess.run([str(EXE), "score", str(photo_paths[0]), "--model", str(bundle_copy)],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "format_version" in res.stderr


def test_cli_reports_corruption_in_one_line(bundle_copy, photo_paths):
    _flip_byte(bundle_copy / "encoder.onnx")
    res = subprocess.run([str(EXE), "score", str(photo_paths[0]), "--model", str(bundle_copy), "-f", "json"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "encoder.onnx: sha256 mismatch" in lines[0]


# -- verification cache --------------------------------------------------------------------------------
def test_verification_cache_skips_rehash_but_never_trusts_a_changed_file(bundle_copy, tmp_path, monkeypatch):
    import hashlib

    import fgresq_sdk.bundle as bundle_mod

    cache = VerifyCache(tmp_path / "cache" / "v.json")
    calls = []
    real = hashlib.sha256

    def counting(data=b""):
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(bundle_mod.hashlib, "sha256", counting)
    load_bundle(bundle_copy, cache=cache).read("encoder")
    assert len(calls) == 1  # first read: hashed
    load_bundle(bundle_copy, cache=cache).read("encoder")
    assert len(calls) == 1  # unchanged file: the cache answers
    # Same size, same mtime (as `touch -r` would restore): still hashed again, and refused.
    p = bundle_copy / "encoder.onnx"
    st = p.stat()
    _flip_byte(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(BundleError, match="sha256 mismatch"):
        load_bundle(bundle_copy, cache=cache).read("encoder")
    assert len(calls) == 2


def test_unwritable_cache_folder_is_harmless(bundle_copy, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cache = VerifyCache(blocker / "sub" / "v.json")  # parent is a file: cannot be created
    assert load_bundle(bundle_copy, cache=cache).read("heads")[:2] == b"PK"


# -- writing bundles: only ever replace a bundle ------------------------------------------------------
def _user_files(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {"notes.txt": "my notes", "todo.md": "- keep me"}
    for k, v in files.items():
        (folder / k).write_text(v)
    return files


def _export_cli(tiny_bundle, out, *extra, cwd=None):
    return subprocess.run([str(EXE), "export", "--checkpoint", str(tiny_bundle), "--out", str(out), *extra],
                          capture_output=True, text=True, cwd=cwd)


def test_export_over_the_current_folder_is_refused_and_deletes_nothing(tiny_bundle, tmp_path):
    files = _user_files(tmp_path / "work")
    for out in (".", "..", str(tmp_path / "work")):
        res = _export_cli(tiny_bundle, out, "--force", cwd=tmp_path / "work")
        assert res.returncode == 2, (out, res.stderr)
        assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert {k: (tmp_path / "work" / k).read_text() for k in files} == files
        assert sorted(p.name for p in (tmp_path / "work").iterdir()) == sorted(files)


def test_export_over_a_folder_of_user_files_is_refused_even_with_force(tiny_bundle, tmp_path):
    notes = tmp_path / "notes"
    files = _user_files(notes)
    res = _export_cli(tiny_bundle, notes, "--force")
    assert res.returncode == 2 and "holds no model.json" in res.stderr
    assert {k: (notes / k).read_text() for k in files} == files
    # A bundle folder with a user's file added to it is not replaced either.
    bundle = tmp_path / "b"
    assert _export_cli(tiny_bundle, bundle).returncode == 0
    (bundle / "my-results.csv").write_text("a,b\n")
    res = _export_cli(tiny_bundle, bundle, "--force")
    assert res.returncode == 2 and "my-results.csv" in res.stderr
    assert (bundle / "my-results.csv").read_text() == "a,b\n"


def test_export_replaces_a_bundle_only_with_force(tiny_bundle, tmp_path):
    out = tmp_path / "re"
    assert _export_cli(tiny_bundle, out).returncode == 0
    first = _manifest(out)["created"]
    res = _export_cli(tiny_bundle, out)
    assert res.returncode == 2 and "--force" in res.stderr
    res = _export_cli(tiny_bundle, out, "--force")
    assert res.returncode == 0, res.stderr
    load_bundle(out).verify_all()
    assert _manifest(out)["files"]["heads"]["sha256"] == _manifest(tiny_bundle)["files"]["heads"]["sha256"]
    assert first <= _manifest(out)["created"]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".re.")]
    assert leftovers == []


def _write_tiny(out: Path, marker: str, fail: BaseException | None = None):
    """A minimal valid bundle written through staged_bundle (its content only needs to be recognisable)."""
    from fgresq_sdk.bundle import write_manifest
    from fgresq_sdk.export.staging import staged_bundle

    with staged_bundle(out) as tmp:
        (tmp / "encoder.onnx").write_text(marker)
        (tmp / "heads.npz").write_text(marker)
        if fail is not None:
            raise fail
        write_manifest(tmp, name=marker, config={"name": marker, "preprocess": {"size": 8}},
                       files={"encoder": "encoder.onnx", "heads": "heads.npz"}, precision="fp32", source="test")


def test_interrupt_while_writing_keeps_the_old_bundle(tmp_path):
    out = tmp_path / "b"
    _write_tiny(out, "old")
    with pytest.raises(KeyboardInterrupt):
        _write_tiny(out, "new", fail=KeyboardInterrupt())
    assert (out / "encoder.onnx").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_interrupt_during_the_swap_leaves_the_new_bundle(tmp_path, monkeypatch, exchange):
    """SIGINT arriving in the middle of the swap is held until the new bundle is in place."""
    import fgresq_sdk.export.staging as staging

    out = tmp_path / "b"
    _write_tiny(out, "old")
    real_rename, real_exchange = os.rename, staging._exchange

    # Ctrl-C as a user's shell delivers it, whatever an earlier test in this process installed; raised in this
    # thread (a process-directed kill may land on a library's native thread and be handled later).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def rename(a, b):
        signal.raise_signal(signal.SIGINT)  # a Ctrl-C between the two steps
        return real_rename(a, b)

    def exch(a, b):
        signal.raise_signal(signal.SIGINT)
        return real_exchange(a, b) if exchange else False

    monkeypatch.setattr(staging, "_exchange", exch)
    monkeypatch.setattr(staging.os, "rename", rename)
    try:
        with pytest.raises(KeyboardInterrupt):
            _write_tiny(out, "new")
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.undo()
    assert (out / "encoder.onnx").read_text() == "new"
    assert (out / "model.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # the old bundle was still deleted


def test_a_file_changed_while_a_loader_reads_it_is_refused(bundle_copy):
    b = load_bundle(bundle_copy, cache=False)
    with pytest.raises(BundleError, match="changed while it was being loaded"):
        with b.opened("encoder") as path:
            assert open(path, "rb").read(4) == (bundle_copy / "encoder.onnx").read_bytes()[:4]
            with open(bundle_copy / "encoder.onnx", "ab") as f:  # written to in place meanwhile
                f.write(b"\0")


def test_the_loader_reads_the_verified_file_even_if_the_name_is_swapped(bundle_copy, tmp_path):
    b = load_bundle(bundle_copy, cache=False)
    original = (bundle_copy / "encoder.onnx").read_bytes()
    seen = []
    # Unlinking the verified file changes its ctime, so the load is refused afterwards too (strict);
    # what matters here is that the loader never saw the swapped-in bytes.
    with pytest.raises(BundleError, match="changed while"):
        with b.opened("encoder") as path:
            (tmp_path / "evil.onnx").write_bytes(b"not the verified graph")
            os.replace(tmp_path / "evil.onnx", bundle_copy / "encoder.onnx")  # swapped by name after the check
            seen.append(open(path, "rb").read())
    assert seen == [original]
