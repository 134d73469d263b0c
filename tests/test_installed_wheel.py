"""The wheel as a user installs it: built from this checkout, installed into a clean venv with no
extras (numpy, pillow, onnxruntime, typer only), and run from a folder outside the checkout so nothing
here can shadow the installed package. Checks package data (configs, the embedded default model), the
entry point, and that the torch-free commands work while the torch ones say which extra they need."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """bin/ folder of a clean venv holding only the wheel and its runtime dependencies."""
    root = tmp_path_factory.mktemp("wheel")
    res = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(root / "dist"), str(REPO)])
    assert res.returncode == 0, res.stderr[-3000:]
    wheels = list((root / "dist").glob("fgresq_sdk-*.whl"))
    assert len(wheels) == 1
    venv = root / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)]).returncode == 0
    res = _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheels[0])])
    if res.returncode != 0:
        pytest.skip(f"cannot install the runtime dependencies here (no package index?): {res.stderr[-300:]}")
    return venv / "bin"


def _in_clean_cwd(installed: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return _run([str(installed / "fgresq-sdk"), *args], cwd=tmp_path, env=env)


def test_installed_package_is_the_runtime_only(installed, tmp_path):
    code = ("import importlib.util, json, fgresq_sdk, fgresq_sdk.configs as c, fgresq_sdk.default_model as d\n"
            "from pathlib import Path\n"
            "print(json.dumps({'file': fgresq_sdk.__file__,"
            " 'configs': sorted(p.name for p in Path(c.__file__).parent.glob('*.json')),"
            " 'default': sorted(p.name for p in Path(d.__file__).parent.iterdir() if p.suffix != '.py'),"
            " 'torch': importlib.util.find_spec('torch') is not None,"
            " 'onnx': importlib.util.find_spec('onnx') is not None,"
            " 'bare_train': importlib.util.find_spec('train') is not None}))")
    res = _run([str(installed / "python"), "-c", code], cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    facts = json.loads(res.stdout)
    assert "site-packages" in facts["file"]
    assert "fgresq-vit-b16.json" in facts["configs"]
    assert {"model.json", "encoder.onnx", "heads.npz"} <= set(facts["default"])
    assert not facts["torch"] and not facts["onnx"] and not facts["bare_train"]


def test_installed_entry_point_ranks_with_the_embedded_model(installed, tmp_path):
    example = REPO / "examples" / "brick-super-resolution"
    res = _in_clean_cwd(installed, tmp_path, "rank", str(example), "-f", "json")
    assert res.returncode == 0, res.stderr
    ranking = json.loads(res.stdout)["groups"][0]["ranking"]
    assert sorted(Path(r["path"]).name for r in ranking) == ["L0.png", "L2.png", "L4.png"]
    assert Path(ranking[0]["path"]).name == "L0.png"  # the undegraded version first (examples/README.md)


def test_installed_scores_match_the_checkout(installed, tmp_path, tiny_bundle, photo_paths):
    from fgresq_sdk.scorer import Scorer

    res = _in_clean_cwd(installed, tmp_path, "score", *map(str, photo_paths[:3]), "--model", str(tiny_bundle),
                        "-f", "json")
    assert res.returncode == 0, res.stderr
    got = [r["score"] for r in json.loads(res.stdout)["results"]]
    np.testing.assert_allclose(got, Scorer(tiny_bundle).score(photo_paths[:3]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("args,extra", [(["import-official", "x.pth", "--out", "o"], "export"),
                                        (["train", "--config", "c.json", "--out", "o"], "train")])
def test_installed_commands_needing_extras_say_which(installed, tmp_path, args, extra):
    (tmp_path / "x.pth").write_bytes(b"PK\x03\x04 not really")
    (tmp_path / "c.json").write_text("{}")
    res = _in_clean_cwd(installed, tmp_path, *args)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert f"fgresq-sdk[{extra}]" in res.stderr
