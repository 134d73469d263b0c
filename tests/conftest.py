"""Shared fixtures: a tiny exported bundle and a folder of real photos (scikit-image's data module)."""
from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

HAS_TORCH = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("open_clip") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="needs torch + open_clip ([torch] extra)")

# The bundle verification cache goes to a per-run folder, never to the user's ~/.cache (subprocesses
# inherit it).
if "FGRESQ_CACHE_DIR" not in os.environ:
    import atexit
    import shutil

    os.environ["FGRESQ_CACHE_DIR"] = tempfile.mkdtemp(prefix="fgresq-test-cache-")
    # It can hold optimized ONNX Runtime graphs (~0.7 GB for ViT-B/16): removed when the run ends.
    atexit.register(shutil.rmtree, os.environ["FGRESQ_CACHE_DIR"], True)

# The first embedded default model (fgresq-compact-vit, recipe v1), kept for the tests that need a *trained* ViT
# bundle: the int8 ladder works on ViT attention blocks, and random weights put scores at near-ties everywhere.
TRAINED_VIT = Path(__file__).parent / "data" / "vit_default_model"

# Under pytest-xdist (`bash scripts/test.sh` runs `-n 2 --dist loadgroup` on two or more CPUs) a module's tests stay
# on one worker, so its module fixtures are built once. Four modules share one worker instead: two of them build this
# checkout with pip (the same build/ and egg-info folders), test_batch's Ray test counts every new /dev/shm entry, which
# the Triton server of test_serve would add if they ran side by side, and test_serve's cleanup checks count processes
# and /dev/shm entries too; test_workers starts pytest on some of their tests, so it joins them.
SERIAL_GROUP = "servers-and-builds"
SERIAL_MODULES = frozenset({"test_serve", "test_installed_wheel", "test_batch", "test_workers"})


def work_unit(nodeid: str) -> str:
    """The work unit a test belongs to: its module's name, or SERIAL_GROUP."""
    module = nodeid.split("::", 1)[0].rpartition("/")[2].removesuffix(".py")
    return SERIAL_GROUP if module in SERIAL_MODULES else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Groups by `work_unit`, in the controller. Why not xdist_group marks added at collection: they never took
    effect here — xdist's worker turns the marks into node-id suffixes in its own pytest_collection_modifyitems,
    which ran before ours, and since pytest 9.2 that suffix no longer changes the node id at all
    (pytest-dev/pytest-xdist#1386) — so until 2026-12-05 every module's tests were spread over both workers, and
    test_serve's SIGINT check counted the other worker's module server's shared memory as its own."""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ModuleGroups(config, log)


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat")


def photo(name: str) -> np.ndarray:
    from skimage import data

    arr = getattr(data, name)()
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    return np.ascontiguousarray(arr[..., :3])


# The low-level prior's layer shapes (out, in channels of its 3×3 convolutions; fgresq_sdk.model.LowLevelPrior).
PRIOR_SHAPES = [(16, 3), (32, 16), (64, 32), (128, 64)]


def random_convs(shapes, seed=0):
    """Seeded (weight, bias) pairs for a prior branch."""
    rng = np.random.default_rng(seed)
    # values exact in float16, so an fp16-stored layer reads back bit for bit
    return [((rng.integers(-64, 64, (o, i, 3, 3)) / 256).astype(np.float32), rng.normal(size=o).astype(np.float32))
            for o, i in shapes]


@pytest.fixture(scope="session")
def photo_dir(tmp_path_factory) -> Path:
    """Real photos at assorted sizes and formats, in two scene folders."""
    root = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(PHOTOS):
        img = Image.fromarray(photo(name))
        scene = root / ("scene_a" if i % 2 == 0 else "scene_b")
        scene.mkdir(exist_ok=True)
        if i % 3 == 0:
            img.save(scene / f"{name}.png")
        else:
            img.resize((img.width // 2, img.height // 3)).save(scene / f"{name}.jpg", quality=92)
    return root


@pytest.fixture(scope="session")
def photo_paths(photo_dir) -> list[Path]:
    return sorted(p for p in photo_dir.rglob("*") if p.is_file())


def _export(cfg_name: str, out: Path, seed: int) -> Path:
    import torch

    from fgresq_sdk.export.onnx_export import export_bundle
    from fgresq_sdk.model import FGResQ

    torch.manual_seed(seed)
    model = FGResQ(cfg_name).eval()
    # Random heads give near-uniform probabilities; widen them so verdicts and rankings are decisive.
    with torch.no_grad():
        model.compare_head.weight.mul_(20.0)
        model.head.weight.mul_(20.0)
    return export_bundle(model, out, source=f"random init seed {seed} (tests)")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory) -> Path:
    """The compact test config, exported (ONNX + checkpoint). Requires torch to build, not to use."""
    if not HAS_TORCH:
        pytest.skip("building a bundle needs torch")
    return _export("fgresq-vit-tiny", tmp_path_factory.mktemp("bundles") / "tiny", seed=0)


# A naturalness section with weights that visibly move the scores (fgresq_sdk/naturalness.py).
NATURALNESS_SECTION = {"method": "niqe-log-distance", "pristine": "niqe_pristine", "weight": 2.0, "scale": 0.8,
                       "offset": 0.3}


@pytest.fixture(scope="session")
def fused_tiny_bundle(tiny_bundle, tmp_path_factory) -> Path:
    """The tiny bundle plus a naturalness term (fixed section, the shipped pristine model): what the term's own
    tests and the server tests score with, so the fused score is checked on every path that serves it."""
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.train.fuse_naturalness import write_fused_bundle
    from fgresq_sdk.train.niqe import DEFAULT_PRISTINE

    return write_fused_bundle(load_bundle(tiny_bundle), tmp_path_factory.mktemp("fused") / "tiny-fused",
                              DEFAULT_PRISTINE.read_bytes(), dict(NATURALNESS_SECTION))


@pytest.fixture(scope="session")
def official_b16(tmp_path_factory):
    """A ViT-B/16 checkpoint in the released FGResQ.pth format (random transformers towers + heads)."""
    if not HAS_TORCH:
        pytest.skip("needs torch")
    import torch

    from official_format import B16, official_state

    sd, img, deg = official_state(B16, seed=3, legacy_names=True)
    path = tmp_path_factory.mktemp("official") / "FGResQ.pth"
    # As released: possibly wrapped and DataParallel-prefixed.
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    return path, sd, img, deg


@pytest.fixture(scope="session")
def imported_b16(official_b16, tmp_path_factory) -> Path:
    """`fgresq-sdk import-official` on that checkpoint through the real CLI: the paper-config bundle."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("imported") / "fgresq-b16"
    exe = Path(sys.executable).parent / "fgresq-sdk"
    res = subprocess.run([str(exe), "import-official", str(official_b16[0]), "--out", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return out
