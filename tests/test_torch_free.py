"""The runtime and every command that does not need torch work with torch impossible to import."""
from __future__ import annotations

import json
import subprocess
import sys

BLOCKER = r'''
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision", "open_clip", "safetensors", "transformers"):
            raise ImportError(f"{name} is blocked in this test")
        return None
sys.meta_path.insert(0, _Block())
'''


def _run(args: list[str]) -> subprocess.CompletedProcess:
    code = BLOCKER + (
        "import sys\nfrom fgresq_sdk.cli import app\n"
        f"sys.argv = ['fgresq-sdk'] + {args!r}\n"
        "try:\n    app()\nfinally:\n"
        "    assert not any(m.split('.')[0] == 'torch' for m in sys.modules), 'torch got imported'\n"
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_import_without_torch():
    res = subprocess.run([sys.executable, "-c", BLOCKER + "import fgresq_sdk, fgresq_sdk.scorer, fgresq_sdk.cli\n"
                          "print(fgresq_sdk.__version__)"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_cli_commands_without_torch(tiny_bundle, photo_dir, photo_paths):
    res = _run(["rank", str(photo_dir), "--group-by", "parent", "--model", str(tiny_bundle), "-f", "json"])
    assert res.returncode == 0, res.stderr
    groups = json.loads(res.stdout)["groups"]
    assert sum(len(g["ranking"]) for g in groups) == len(photo_paths)
    res = _run(["score", str(photo_paths[0]), "--model", str(tiny_bundle), "-f", "json"])
    assert res.returncode == 0 and 0 < json.loads(res.stdout)["results"][0]["score"] < 1
    res = _run(["compare", str(photo_paths[0]), str(photo_paths[1]), "--model", str(tiny_bundle), "-f", "json"])
    assert res.returncode == 0 and json.loads(res.stdout)["verdict"] in ("first", "second", "similar")
    res = _run(["info", "--model", str(tiny_bundle), "-f", "json"])
    assert res.returncode == 0 and json.loads(res.stdout)["backend"] == "onnxruntime"


def test_torch_backend_without_torch_is_a_clear_usage_error(tiny_bundle, photo_paths):
    res = _run(["score", str(photo_paths[0]), "--model", str(tiny_bundle), "--backend", "torch"])
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert "pip install 'fgresq-sdk[torch]'" in res.stderr
