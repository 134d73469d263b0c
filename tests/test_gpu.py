"""GPU paths (torch-CUDA fp16/bf16 and CUDA graphs, ONNX Runtime CUDA, TensorRT) against the fp32 reference.

Each GPU test runs only where its hardware and software exist (skipif on torch.cuda, onnxruntime's
CUDAExecutionProvider, an importable tensorrt); nothing here stands in for CUDA or TensorRT. The tests
that can run on a CPU-only machine (auto backend choice, clear errors, fp16 ONNX on the CPU, Scorer's
precision option on the torch backend, the engine-record comparison) always run. The CUDA tests build
their Scorers with the options users pass (backend, device, precision, cuda_graphs), never by swapping
a backend in.

Reference: the torch fp32 model on the CPU. Inputs: the real photos of `photo_paths`, each also blurred,
JPEG-compressed and noised, so 24 images give 276 fixed pairs whose comparison verdicts are checked.
Tolerances on |Δscore|: fp32 on another device 1e-4; fp16 5e-3; bf16 5e-2. bf16 keeps fp32's exponent
but only 8 significand bits against fp16's 11 (unit roundoff 2^-9 vs 2^-12, 8× coarser), so every
activation it rounds carries ~8× fp16's error: the bound scales with it (measured on the tiny model on
a CPU: fp16 2.4e-3, bf16 3.0e-2; its ×20 widened heads magnify score differences on purpose).
"""
from __future__ import annotations

import io
import itertools
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import HAS_TORCH
from fgresq_sdk.backends.probe import cuda_driver_devices, importable
from fgresq_sdk.errors import BackendError


def _torch_cuda() -> bool:
    if not HAS_TORCH:
        return False
    import torch

    return torch.cuda.is_available()


def _ort_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers() and cuda_driver_devices()[0] > 0


CUDA = _torch_cuda()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU visible to torch")
needs_ort_cuda = pytest.mark.skipif(not _ort_cuda(), reason="needs onnxruntime-gpu (CUDAExecutionProvider) and a GPU")
needs_trt = pytest.mark.skipif(not (CUDA and importable("tensorrt")), reason="needs TensorRT and a CUDA GPU")
no_gpu_driver = pytest.mark.skipif(cuda_driver_devices()[0] > 0, reason="this machine has a CUDA GPU")

TOL = {"fp32": 1e-4, "fp16": 5e-3, "bf16": 5e-2}
MIN_AGREEMENT = 0.99


# -- fixtures ---------------------------------------------------------------------------------------------
def _variants(arr: np.ndarray, seed: int) -> list[np.ndarray]:
    """The photo, a blurred (down/up-scaled) copy, a JPEG q=8 copy and a noisy copy."""
    from PIL import Image

    img = Image.fromarray(arr)
    w, h = img.size
    blurred = np.asarray(img.resize((max(1, w // 4), max(1, h // 4))).resize((w, h)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=8)
    jpeg = np.asarray(Image.open(buf).convert("RGB"))
    noisy = np.clip(arr + np.random.default_rng(seed).normal(0, 25, arr.shape), 0, 255).astype(np.uint8)
    return [arr, blurred, jpeg, noisy]


@pytest.fixture(scope="module")
def pair_images(photo_paths) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for k, p in enumerate(photo_paths):
        out += _variants(np.asarray(Image.open(p).convert("RGB")), seed=k)
    return out


@pytest.fixture(scope="module")
def reference(tiny_bundle, pair_images):
    """torch fp32 on the CPU: (features, scores, preprocessed batch)."""
    from fgresq_sdk.scorer import Scorer

    s = Scorer(tiny_bundle, backend="torch", device="cpu", batch_size=8)
    q, sc = s.encode(pair_images)
    assert float(np.std(sc)) > 1e-2, "reference scores are degenerate; parity would prove nothing"
    return q, sc


def _decisions(head, q: np.ndarray) -> np.ndarray:
    pairs = list(itertools.combinations(range(len(q)), 2))
    i, j = map(list, zip(*pairs))
    return head.all_pairs_probs(q)[i, j].argmax(-1)


def _check(scorer, reference, images, tol: float, min_agreement: float = MIN_AGREEMENT) -> dict:
    q_ref, s_ref = reference
    q, s = scorer.encode(images)
    dscore = float(np.max(np.abs(s - s_ref)))
    agree = float(np.mean(_decisions(scorer.head, q) == _decisions(scorer.head, q_ref)))
    assert dscore <= tol, f"max |Δscore| {dscore:.2e} > {tol:.0e}"
    assert agree >= min_agreement, f"pair decisions agree on {agree:.1%} < {min_agreement:.0%}"
    return {"max_abs_dscore": dscore, "agreement": agree}


def _scorer(bundle, **kw):
    from fgresq_sdk.scorer import Scorer

    return Scorer(bundle, batch_size=8, **kw)


# -- CPU-runnable ------------------------------------------------------------------------------------------
def _run_py(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def _auto_describe(bundle, device: str) -> dict:
    """describe() of the `auto` backend, built in a fresh interpreter that must not import torch or TensorRT."""
    res = _run_py(
        "import json, sys\nfrom fgresq_sdk.bundle import load_bundle\nfrom fgresq_sdk.backends import create_backend\n"
        f"b = create_backend('auto', load_bundle({str(bundle)!r}), device={device!r})\n"
        "print(json.dumps(b.describe()))\n"
        "assert not any(m.split('.')[0] in ('torch', 'tensorrt') for m in sys.modules), 'torch/tensorrt imported'\n")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_auto_with_device_cpu_probes_nothing(tiny_bundle):
    """--device cpu (the CLI default): onnxruntime on the CPU, without importing torch or TensorRT."""
    d = _auto_describe(tiny_bundle, 'cpu')
    assert (d["backend"], d["device"]) == ("onnxruntime", "cpu")
    assert "--device cpu" in d["auto_reason"]


@no_gpu_driver
def test_auto_on_a_cpu_only_machine_picks_onnxruntime_cpu_and_says_why(tiny_bundle):
    d = _auto_describe(tiny_bundle, 'auto')
    assert (d["backend"], d["device"]) == ("onnxruntime", "cpu")
    assert "no CUDA device" in d["auto_reason"]
    assert set(d["auto_skipped"]) == {"tensorrt", "onnxruntime-cuda", "torch-cuda"}
    from fgresq_sdk.backends import create_backend
    from fgresq_sdk.bundle import load_bundle

    with pytest.raises(BackendError, match="no CUDA device"):
        create_backend("auto", load_bundle(tiny_bundle), device="cuda")


@pytest.mark.skipif(importable("tensorrt"), reason="TensorRT is installed here")
def test_tensorrt_without_tensorrt_is_a_clear_error(tiny_bundle, tmp_path):
    from fgresq_sdk.backends import create_backend
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.export.tensorrt_build import build_engine

    b = load_bundle(tiny_bundle)
    for device in ("cuda", "cpu", "auto"):
        with pytest.raises(BackendError) as exc:
            create_backend("tensorrt", b, device=device)
        assert "TensorRT is not installed; pip install 'fgresq-sdk[trt]'" in str(exc.value)
        assert "no TensorRT engine" in str(exc.value)
    with pytest.raises(BackendError, match=r"pip install 'fgresq-sdk\[trt\]'"):
        build_engine(tiny_bundle, tmp_path / "engine")
    assert not (tmp_path / "engine").exists()


def test_fp16_onnx_bundle_on_onnxruntime_cpu(tiny_bundle, tmp_path, pair_images):
    from fgresq_sdk.export.half import half_bundle

    fp32 = _scorer(tiny_bundle, backend="onnxruntime", device="cpu")
    ref = fp32.encode(pair_images)
    half = _scorer(half_bundle(tiny_bundle, tmp_path / "fp16"), backend="onnxruntime", device="cpu")
    assert half.backend.describe()["precision"] == "fp16"
    _check(half, ref, pair_images, TOL["fp16"])


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_torch_reduced_precision_plumbing_on_cpu(tiny_bundle, reference, pair_images, precision):
    """Towers in fp16/bf16, heads in fp32 — checked on the CPU, where torch runs both types too."""
    import torch

    s = _scorer(tiny_bundle, backend="torch", device="cpu", precision=precision)  # through Scorer's options
    m = s.backend.model
    want = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    assert m.image_tower.tower.conv1.weight.dtype == want and m.degradation_tower.tower.conv1.weight.dtype == want
    assert m.head.weight.dtype == m.compare_head.weight.dtype == m.prompt.dtype == torch.float32
    _check(s, reference, pair_images, TOL[precision])
    assert s.backend.describe()["precision"] == precision


def test_torch_backend_option_errors(tiny_bundle):
    from fgresq_sdk.backends import create_backend
    from fgresq_sdk.bundle import load_bundle

    b = load_bundle(tiny_bundle)
    with pytest.raises(BackendError, match="unknown precision"):
        create_backend("torch", b, precision="fp8")
    with pytest.raises(BackendError, match="CUDA graphs need --device cuda"):
        create_backend("torch", b, device="cpu", cuda_graphs=True)
    with pytest.raises(BackendError, match="runs the bundle's own precision"):
        create_backend("onnxruntime", b, precision="fp16")
    with pytest.raises(BackendError, match="unknown device"):
        create_backend("auto", b, device="gpu0")


def test_engine_record_comparison():
    """The portability rule itself (plain dicts; the GPU test below runs it against a real engine)."""
    from fgresq_sdk.backends.tensorrt_backend import ENGINE_RECORD_FORMAT, record_mismatches

    here = {"name": "NVIDIA H200", "compute_capability": "9.0"}
    rec = {"format": ENGINE_RECORD_FORMAT, "tensorrt": "10.9.0", "gpu": dict(here)}
    assert record_mismatches(rec, "10.9.0", here) == []
    assert len(record_mismatches({**rec, "tensorrt": "10.8.0"}, "10.9.0", here)) == 1
    other = {"name": "NVIDIA L4", "compute_capability": "8.9"}
    assert len(record_mismatches(rec, "10.9.0", other)) == 2
    assert record_mismatches({"format": "x"}, "10.9.0", here)


def test_batch_profile_parsing():
    from fgresq_sdk.errors import BundleError
    from fgresq_sdk.export.tensorrt_build import parse_batch

    assert parse_batch("1,8,32") == (1, 8, 32)
    assert parse_batch((2, 2, 2)) == (2, 2, 2)
    for bad in ("8,1,32", "0,1,2", "1,8", "a,b,c"):
        with pytest.raises(BundleError):
            parse_batch(bad)


# -- torch on CUDA ---------------------------------------------------------------------------------------
@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_torch_cuda_vs_cpu_fp32(tiny_bundle, reference, pair_images, precision):
    s = _scorer(tiny_bundle, backend="torch", device="cuda", precision=precision)
    d = s.describe()
    assert (d["backend"], d["device"], d["precision"]) == ("torch", "cuda", precision) and "cuda_graphs" not in d
    assert s.backend.graphed is None
    _check(s, reference, pair_images, TOL[precision])


# fp16 pair probabilities vs the fp32 reference: measured max |Δp| 4.5e-3 over the 552 ordered pairs
# (torch fp16 on the CPU, 2× the score error as the ×20 heads magnify feature error); 4× that.
TOL_PROB_FP16 = 2e-2


@needs_cuda
def test_scorer_torch_cuda_fp16_cuda_graphs_end_to_end(tiny_bundle, reference, pair_images):
    """What a user runs: Scorer(backend='torch', device='cuda', precision='fp16', cuda_graphs=True). The
    options must reach the backend (fp16 towers on the GPU, fp32 heads, graphs captured per batch size as
    batches arrive) and score/compare/rank must match the fp32 CPU reference."""
    import torch

    from fgresq_sdk.backends.torch_backend import DEFAULT_GRAPH_BATCHES
    from fgresq_sdk.scorer import Scorer

    s = Scorer(tiny_bundle, backend="torch", device="cuda", precision="fp16", cuda_graphs=True, batch_size=8)
    d = s.describe()
    assert (d["backend"], d["device"], d["precision"]) == ("torch", "cuda", "fp16"), d
    assert d["cuda_graphs"] == list(DEFAULT_GRAPH_BATCHES), d
    m = s.backend.model
    for tower in (m.image_tower, m.degradation_tower):
        w = tower.tower.conv1.weight
        assert w.dtype == torch.float16 and w.is_cuda
    assert m.head.weight.dtype == m.compare_head.weight.dtype == torch.float32 and m.head.weight.is_cuda
    assert s.backend.graphed.graphs == {}  # captured lazily, per batch size met
    _check(s, reference, pair_images, TOL["fp16"])  # 24 images in batches of 8
    assert sorted(s.backend.graphed.graphs) == [8]

    ref = Scorer(tiny_bundle, backend="torch", device="cpu")
    for a, b in [(0, 5), (5, 0), (1, 2), (3, 20)]:
        got, want = s.compare(pair_images[a], pair_images[b]), ref.compare(pair_images[a], pair_images[b])
        for k in ("p_first_better", "p_second_better", "p_similar"):
            assert abs(getattr(got, k) - getattr(want, k)) <= TOL_PROB_FP16, (a, b, got, want)
    assert sorted(s.backend.graphed.graphs) == [2, 8]  # a compare is a batch of 2: its own graph

    six = pair_images[:6]
    r, r_ref = s.rank(six), ref.rank(six)  # 6 images: padded into the captured 8-graph
    assert sorted(s.backend.graphed.graphs) == [2, 8]
    assert float(np.max(np.abs(r.scores - r_ref.scores))) <= TOL["fp16"]
    assert float(np.max(np.abs(r.p_better_matrix() - r_ref.p_better_matrix()))) <= TOL_PROB_FP16


@needs_cuda
def test_cli_score_torch_cuda_fp16_cuda_graphs(tiny_bundle, photo_dir, photo_paths):
    """The same options through `fgresq-sdk score`: accepted, applied, and the scores match fp32 on the CPU."""
    from cli_runner import run_cli
    from fgresq_sdk.scorer import Scorer

    names = [str(p.relative_to(photo_dir)) for p in photo_paths]
    run = run_cli("score", *names, "--model", tiny_bundle, "--backend", "torch", "--device", "cuda",
                  "--precision", "fp16", "--cuda-graphs", "-f", "json", cwd=photo_dir)
    assert run.rc == 0, run.err
    got = {r["path"]: r["score"] for r in run.json()["results"]}
    want = Scorer(tiny_bundle, backend="torch", device="cpu").score(photo_paths)
    assert list(got) == names
    assert float(np.max(np.abs(np.array([got[n] for n in names]) - want))) <= TOL["fp16"]


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_cuda_graphs_match_eager(tiny_bundle, pair_images, precision):
    """Graph replay (padded to captured sizes, chunked beyond the largest) = eager on the same GPU."""
    from fgresq_sdk.preprocess import preprocess

    b = _scorer(tiny_bundle).bundle
    x = np.stack([preprocess(a, b.preprocess) for a in pair_images[:11]])
    from fgresq_sdk.backends.torch_backend import TorchBackend

    eager = TorchBackend(b, device="cuda", precision=precision)
    # 11 images = one 8-chunk + 3 padded to 4; 1 image = the 1-graph.
    graphs = TorchBackend(b, device="cuda", precision=precision, cuda_graphs=True, graph_batch_sizes=(1, 4, 8))
    tol = 1e-4 if precision == "fp32" else 2e-3  # other batch sizes may pick other GEMM kernels
    for batch in (x, x[:1], x[:11]):
        qe, se = eager.encode(batch)
        qg, sg = graphs.encode(batch)
        assert qg.shape == qe.shape and sg.shape == se.shape
        assert float(np.max(np.abs(sg - se))) <= tol
        assert float(np.max(np.abs(qg - qe))) <= 50 * tol
    assert sorted(graphs.graphed.graphs) == [1, 4, 8]
    again = graphs.encode(x[:3])  # replaying a captured graph again gives the same answer
    assert np.array_equal(again[1], graphs.encode(x[:3])[1])


@needs_cuda
def test_auto_on_a_gpu_machine_picks_a_gpu_backend(tiny_bundle):
    from fgresq_sdk.backends import create_backend
    from fgresq_sdk.bundle import load_bundle

    be = create_backend("auto", load_bundle(tiny_bundle), device="auto")
    d = be.describe()
    assert d["device"].startswith("cuda"), d
    assert d["auto_reason"]
    if d["backend"] == "torch":  # no engine in this bundle; ORT-CUDA absent
        assert "tensorrt" in d["auto_skipped"] and "onnxruntime-cuda" in d["auto_skipped"]


# -- ONNX Runtime CUDA -----------------------------------------------------------------------------------
@needs_ort_cuda
def test_onnxruntime_cuda_fp32_and_fp16(tiny_bundle, reference, pair_images, tmp_path):
    from fgresq_sdk.export.half import half_bundle

    s32 = _scorer(tiny_bundle, backend="onnxruntime", device="cuda")
    assert s32.backend.providers[0] == "CUDAExecutionProvider"
    _check(s32, reference, pair_images, TOL["fp32"], min_agreement=1.0)
    s16 = _scorer(half_bundle(tiny_bundle, tmp_path / "fp16"), backend="onnxruntime", device="cuda")
    _check(s16, reference, pair_images, TOL["fp16"])


# -- TensorRT --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def engine_bundle(tiny_bundle, tmp_path_factory):
    from fgresq_sdk.export.tensorrt_build import build_engine

    work = tmp_path_factory.mktemp("trt")
    # min 2 so that one image is padded; max 8 so that 24 images are cut into chunks.
    out = build_engine(tiny_bundle, work / "tiny-trt", fp16=True, batch=(2, 4, 8), workspace_gb=2,
                       timing_cache=work / "timing.cache")
    return out, work / "timing.cache"


@needs_trt
def test_tensorrt_build_run_parity(engine_bundle, reference, pair_images):
    from fgresq_sdk.bundle import load_bundle

    root, cache = engine_bundle
    b = load_bundle(root)
    assert b.precision == "fp16" and b.has("engine") and b.has("engine_record")
    rec = json.loads(b.path("engine_record").read_text())
    assert rec["profile"]["min"][0] == 2 and rec["profile"]["max"][0] == 8
    assert rec["source_onnx_sha256"] == b.manifest["files"]["encoder"]["sha256"]
    assert cache.is_file() and cache.stat().st_size > 0
    s = _scorer(root, backend="tensorrt", device="cuda")
    assert s.backend.describe()["backend"] == "tensorrt"
    _check(s, reference, pair_images, TOL["fp16"])
    one = s.backend.encode(np.zeros((1, 3, 224, 224), np.float32))  # padded up to the min batch
    assert one[0].shape[0] == 1 and one[1].shape == (1,)
    auto = _scorer(root, backend="auto", device="auto")
    assert auto.backend.name == "tensorrt"


@needs_trt
def test_tensorrt_record_mismatch_is_refused(engine_bundle, tmp_path):
    from fgresq_sdk.backends import create_backend
    from fgresq_sdk.bundle import MANIFEST, load_bundle, sha256_file

    copy = tmp_path / "elsewhere"
    shutil.copytree(engine_bundle[0], copy)
    rec_path = copy / "engine.json"
    rec = json.loads(rec_path.read_text())
    rec["gpu"]["name"] = "NVIDIA Some Other GPU"  # as if built on another machine
    rec_path.write_text(json.dumps(rec))
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["files"]["engine_record"]["sha256"] = sha256_file(rec_path)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    b = load_bundle(copy)
    with pytest.raises(BackendError, match="not portable") as exc:
        create_backend("tensorrt", b, device="cuda")
    assert "NVIDIA Some Other GPU" in str(exc.value)
    auto = create_backend("auto", b, device="auto")  # auto skips the engine and says why
    assert auto.name != "tensorrt" and "not portable" in auto.describe()["auto_skipped"]["tensorrt"]
