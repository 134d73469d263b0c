"""The runtime-only install (numpy, pillow, onnxruntime, typer): every command that needs an optional extra
says which one in one line (exit 2), and `bench` skips what it cannot run and reports the rest.

Like test_torch_free.py, and with its import blocker, each run is the real CLI in a fresh interpreter
where the extras' packages (torch…, and here also onnx, scipy, scikit-image, TensorRT) cannot be
imported, so this runs anywhere, with or without those packages installed.
"""
from __future__ import annotations

import json
import subprocess
import sys
import zipfile

import pytest

from fgresq_sdk.bundle import default_bundle_path
from test_torch_free import BLOCKER as TORCH_BLOCKER

BLOCKED_EXTRAS = ("onnx", "onnxscript", "scipy", "skimage", "tensorrt")


def block(packages) -> str:
    """Interpreter code that makes the top-level `packages` unimportable (after test_torch_free's BLOCKER)."""
    return f'''
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {tuple(packages)!r}:
            raise ImportError(f"{{name}} is blocked in this test")
        return None
sys.meta_path.insert(0, _Block())
'''


BLOCKER = TORCH_BLOCKER + block(BLOCKED_EXTRAS)


def runtime_only_code(argv: list[str], also_blocked: tuple[str, ...] = ()) -> str:
    """A fresh interpreter running `fgresq-sdk ARGV` with torch, the other extras and `also_blocked`
    unimportable."""
    return (BLOCKER + (block(also_blocked) if also_blocked else "")
            + f"import sys\nfrom fgresq_sdk.cli import main\nsys.argv = ['fgresq-sdk'] + {argv!r}\nmain()\n")


def run_runtime_only(args: list[str], cwd) -> subprocess.CompletedProcess:
    """`fgresq-sdk ARGS` (its console-script entry point) with every extra unimportable."""
    res = subprocess.run([sys.executable, "-c", runtime_only_code(args)], capture_output=True, text=True, cwd=cwd,
                         timeout=300)
    assert "Traceback" not in res.stdout + res.stderr, res.stderr
    return res


def _lines(res) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.strip()]


@pytest.fixture()
def pth(tmp_path):
    """A file shaped like a torch.save checkpoint (a zip archive): it passes the cheap format check."""
    with zipfile.ZipFile(tmp_path / "FGResQ.pth", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    return tmp_path / "FGResQ.pth"


@pytest.mark.parametrize("args,command,extra", [
    (["import-official", "FGResQ.pth", "--out", "out"], "import-official", "export"),
    (["export", "--checkpoint", "model.safetensors", "--out", "out"], "export", "export"),
    (["eval", "--manifest", "manifest"], "eval", "train"),
    (["train", "--config", "compact-synthetic", "--out", "run"], "train", "train"),
])
def test_commands_name_the_missing_extra(pth, tmp_path, args, command, extra):
    res = run_runtime_only(args, tmp_path)
    assert res.returncode == 2
    assert res.stdout == ""
    (line,) = _lines(res)
    assert line.startswith(f"error: {command} needs the {extra} extra: pip install 'fgresq-sdk[{extra}]'"), line
    assert not (tmp_path / "out").exists() and not (tmp_path / "run").exists()


def test_export_int8_from_a_bundle_needs_only_onnx(tmp_path):
    bundle = default_bundle_path()
    if bundle is None:
        pytest.skip("this build has no embedded default model")
    res = run_runtime_only(["export", "-c", str(bundle), "-o", "out", "--format", "onnx-int8"], tmp_path)
    assert res.returncode == 2
    (line,) = _lines(res)
    assert "pip install 'fgresq-sdk[export]'" in line and "(missing: onnx)" in line


def test_import_official_of_a_text_file_without_torch(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    res = run_runtime_only(["import-official", "notes.txt", "--out", "out"], tmp_path)
    assert res.returncode == 2
    (line,) = _lines(res)
    assert line.startswith("error: notes.txt: not a PyTorch checkpoint file")


def test_bench_skips_variants_whose_extra_is_missing_and_reports_the_rest(tmp_path):
    bundle = default_bundle_path()
    if bundle is None:
        pytest.skip("this build has no embedded default model")
    common = ["bench", "--backend", "onnxruntime,torch", "--precision", "fp32,int8,fp16", "--batch-sizes", "1",
              "--images", "2", "--repeats", "1"]
    res = run_runtime_only(common + ["-f", "json"], tmp_path)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert [r["variant"] for r in out["results"]] == ["onnxruntime-fp32"]
    assert out["reference"] == "onnxruntime-fp32"
    skipped = {s["variant"]: s["reason"] for s in out["skipped"]}
    assert set(skipped) == {"onnxruntime-int8", "onnxruntime-fp16", "torch-fp32"}
    for v in ("onnxruntime-int8", "onnxruntime-fp16"):
        assert "pip install 'fgresq-sdk[export]'" in skipped[v]
    assert "fgresq-sdk[torch]" in skipped["torch-fp32"]
    assert sum("skipped:" in ln for ln in _lines(res)) == 3
    res = run_runtime_only(common, tmp_path)  # the table: the fp32 row, not an empty table
    assert res.returncode == 0 and "onnxruntime-fp32" in res.stdout and "int8" not in res.stdout


def test_bench_where_no_variant_can_run_exits_1(tmp_path):
    if default_bundle_path() is None:
        pytest.skip("this build has no embedded default model")
    res = run_runtime_only(["bench", "--backend", "onnxruntime", "--precision", "int8", "--batch-sizes", "1",
                            "--images", "2", "--repeats", "1"], tmp_path)
    assert res.returncode == 1
    assert res.stdout == ""
    assert _lines(res)[-1].startswith("error: no variant could run")


def test_bench_rank_sizes_checked_before_the_run(tmp_path):
    if default_bundle_path() is None:
        pytest.skip("this build has no embedded default model")
    res = run_runtime_only(["bench", "--backend", "onnxruntime", "--precision", "fp32", "--batch-sizes", "1",
                            "--images", "2", "--repeats", "1", "--rank-sizes", "3"], tmp_path)
    assert res.returncode == 2
    assert res.stdout == ""
    (line,) = _lines(res)
    assert line.startswith("error: ") and "--rank-sizes" in line
