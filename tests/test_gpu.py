"""GPU paths (torch-CUDA fp16/bf16, CUDA graphs and torch.compile, ONNX Runtime CUDA, TensorRT) against the fp32
reference, and the GPU bookkeeping that can be checked anywhere.

Each GPU test runs only where its hardware and software exist (skipif on torch.cuda, onnxruntime's
CUDAExecutionProvider, an importable tensorrt) and says why it skipped; nothing here stands in for CUDA or
TensorRT. What runs on a CPU-only machine: auto backend choice and its reasons, clear errors, the fp16 ONNX
graph (its fp32 islands, LayerNormalization included, and its scores on ONNX Runtime CPU), the torch
backend's precision plumbing, torch.compile on the CPU (static buckets, no recompiles, parity with eager),
0-image batches, and the engine bookkeeping: the engine record, the portability rule, and an engine bundle
written by the real writer around placeholder engine bytes (never handed to TensorRT: this machine has
none, and on one that has, the record names no real GPU so the backend refuses it before deserializing).
The CUDA tests build their Scorers with the options users pass (backend, device, precision, cuda_graphs,
compile), never by swapping a backend in.

Reference: the torch fp32 model on the CPU. Inputs: the real photos of `photo_paths` (synthetic photos
where scikit-image is missing, as on a bare GPU image), each also blurred, JPEG-compressed and noised, so
24 images give 276 fixed pairs whose comparison verdicts are checked.
Tolerances on |Δscore|: fp32 on another device 1e-4; fp16 5e-3; bf16 5e-2. bf16 keeps fp32's exponent
but only 8 significand bits against fp16's 11 (unit roundoff 2^-9 vs 2^-12, 8× coarser), so every
activation it rounds carries ~8× fp16's error: the bound scales with it (measured on the tiny model on
a CPU: fp16 2.4e-3, bf16 3.0e-2; its ×20 widened heads magnify score differences on purpose).
torch.compile is held to its precision's tolerance against the fp32 reference, and compiled fp32 to the
fp16 tolerance against eager fp32 (Inductor fuses and reorders float arithmetic; measured 3.6e-7 on the CPU).
"""
from __future__ import annotations

import io
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

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
def gpu_photos(request, tmp_path_factory) -> list:
    """scikit-image's photos (conftest's photo_paths) where it is installed, else deterministic synthetic
    photos: the GPU machine's image may lack scikit-image, and these tests are about the model, not the data."""
    if importable("skimage"):
        return request.getfixturevalue("photo_paths")
    from fgresq_sdk.photos import synthetic_photos

    return synthetic_photos(6, tmp_path_factory.mktemp("synthetic-photos"))


@pytest.fixture(scope="module")
def pair_images(gpu_photos) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for k, p in enumerate(gpu_photos):
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


def _encode_in_child(bundle, x: np.ndarray, tmp_path) -> tuple[np.ndarray, np.ndarray]:
    """The onnxruntime backend's encode() of `x`, run in a child process: onnxruntime's CPU graph optimiser has
    crashed the whole process (SIGSEGV) on fp16 graphs (see export/half.py), which must fail one test, not end
    the run."""
    np.save(tmp_path / "x.npy", x)
    res = _run_py("import numpy as np\nfrom fgresq_sdk.backends import create_backend\n"
                  "from fgresq_sdk.bundle import load_bundle\n"
                  f"be = create_backend('onnxruntime', load_bundle({str(bundle)!r}), device='cpu')\n"
                  f"q, s = be.encode(np.load({str(tmp_path / 'x.npy')!r}))\n"
                  f"np.savez({str(tmp_path / 'out.npz')!r}, q=q, s=s, precision=be.precision)\n")
    assert res.returncode == 0, f"onnxruntime on the CPU exited {res.returncode}: {res.stderr[-800:]}"
    out = np.load(tmp_path / "out.npz")
    assert str(out["precision"]) == "fp16"
    return out["q"], out["s"]


def test_fp16_onnx_bundle_on_onnxruntime_cpu(tiny_bundle, tmp_path, pair_images):
    """The onnx-fp16 bundle through the onnxruntime backend on the CPU: it loads (no optimiser crash) and stays
    within fp16's tolerance of the fp32 bundle."""
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.export.half import half_bundle
    from fgresq_sdk.preprocess import preprocess

    fp32 = _scorer(tiny_bundle, backend="onnxruntime", device="cpu")
    b = load_bundle(half_bundle(tiny_bundle, tmp_path / "fp16"))
    x = np.stack([preprocess(a, b.preprocess_spec) for a in pair_images])
    q_ref, s_ref = fp32.backend.encode(x)
    q, s = _encode_in_child(b.root, x, tmp_path)
    dscore = float(np.max(np.abs(s - s_ref)))
    agree = float(np.mean(_decisions(fp32.head, q) == _decisions(fp32.head, q_ref)))
    assert dscore <= TOL["fp16"] and agree >= MIN_AGREEMENT, (dscore, agree)


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


def test_tensorrt_version_and_cuda_bookkeeping():
    """TensorRT's own CUDA major comes from its wheels' names (its Python package has no attribute for it);
    the version check keeps 10.x and 11.x."""
    from fgresq_sdk.backends.tensorrt_backend import SUPPORTED_MAJORS, tensorrt_cuda, tensorrt_major

    assert SUPPORTED_MAJORS == (10, 11)
    assert [tensorrt_major(v) for v in ("10.9.0.34", "11.4.0.106", "9.3.0", "x")] == [10, 11, 9, 0]
    wheels = [("tensorrt", "11.4.0.106"), ("tensorrt-cu13", "11.4.0.106"), ("tensorrt_cu13_libs", "11.4.0.106"),
              ("tensorrt-cu13-bindings", "11.4.0.106"), ("tensorrt-cu12-libs", "10.9.0.34"), ("torch", "2.11.0")]
    got = tensorrt_cuda(wheels, "11.4.0.106")
    assert got["cuda_major"] == "13" and "tensorrt-cu13-libs 11.4.0.106" in got["from"]
    assert tensorrt_cuda(wheels, "10.9.0.34")["cuda_major"] == "12"  # only the wheels of this TensorRT count
    assert tensorrt_cuda([("tensorrt", "10.9.0.34")], "10.9.0.34") is None  # tar/deb install: unknown, not guessed
    mixed = tensorrt_cuda([("tensorrt-cu12", "10.9.0.34"), ("tensorrt-cu13", "10.9.0.34")], "10.9.0.34")
    assert mixed["cuda_major"] is None and "several" in mixed["note"]


def test_engine_record_contents():
    from fgresq_sdk.backends.tensorrt_backend import ENGINE_RECORD_FORMAT, record_mismatches
    from fgresq_sdk.errors import BundleError
    from fgresq_sdk.export.tensorrt_build import engine_record

    gpu = {"name": "NVIDIA H200", "compute_capability": "9.0"}
    rec = engine_record(precision="fp16", tensorrt="11.4.0.106", tensorrt_cuda={"cuda_major": "13", "from": "x"},
                        gpu=gpu, batch=(1, 8, 32), size=224, source_sha256="a" * 64,
                        engine_onnx={"precision": "fp16", "sha256": "b" * 64}, source_bundle="/b",
                        facts={"network": "strongly typed", "tf32": False, "build_seconds": 1.0},
                        torch_cuda="13.0", cuda_driver="13.0")
    assert rec["format"] == ENGINE_RECORD_FORMAT and rec["precision"] == "fp16"
    assert rec["profile"] == {"input": "image", "min": [1, 3, 224, 224], "opt": [8, 3, 224, 224],
                              "max": [32, 3, 224, 224]}
    assert rec["tensorrt_cuda"]["cuda_major"] == "13" and rec["torch_cuda"] == "13.0"
    assert "cuda_runtime" not in rec  # torch's CUDA is not TensorRT's: the old field said torch's under that name
    assert rec["tf32"] is False and rec["network"] == "strongly typed"
    assert rec["source_onnx_sha256"] == "a" * 64 and rec["engine_onnx"]["sha256"] == "b" * 64
    assert record_mismatches(rec, "11.4.0.106", gpu) == []
    with pytest.raises(BundleError, match="engine precision"):
        engine_record(precision="bf16", tensorrt="11.4.0.106", tensorrt_cuda=None, gpu=gpu, batch=(1, 1, 1),
                      size=224, source_sha256="a" * 64, engine_onnx={}, source_bundle="/b", facts={})


PLACEHOLDER_GPU = {"name": "none (bookkeeping test: placeholder engine bytes)", "compute_capability": "0.0"}


def _engine_bundle_with_placeholder_engine(src, out, precision: str = "fp16"):
    """An engine bundle written by the real writer (write_engine_bundle, staged like build_engine), with
    placeholder bytes where the serialized engine goes. Only the bookkeeping is under test: the bytes are never
    handed to TensorRT (none here; where there is one, the record's GPU matches nothing, so the backend refuses
    the engine before deserializing it)."""
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.export.staging import copy_verified, staged_bundle
    from fgresq_sdk.export.tensorrt_build import engine_record, write_engine_bundle

    b = load_bundle(src)
    sha = b.manifest["files"]["encoder"]["sha256"]
    rec = engine_record(precision=precision, tensorrt="0.0.0-placeholder", tensorrt_cuda=None, gpu=PLACEHOLDER_GPU,
                        batch=(1, 4, 8), size=int(b.preprocess["size"]), source_sha256=sha,
                        engine_onnx={"precision": precision, "sha256": sha}, source_bundle=str(b.root),
                        facts={"network": "strongly typed", "tf32": False})
    with staged_bundle(out, False) as tmp:
        copy_verified(b, "encoder", tmp / "encoder.onnx")
        write_engine_bundle(b, tmp, engine_bytes=b"placeholder, not a TensorRT engine", record=rec,
                            gpu_name=PLACEHOLDER_GPU["name"], trt_version="0.0.0-placeholder")
    return out


def test_engine_bundle_precision_is_its_onnx_and_the_record_holds_the_engines(tiny_bundle, tmp_path, pair_images):
    """The bundle says fp32 (its encoder.onnx, what onnxruntime runs); the engine's fp16 is in the record. So an
    onnxruntime fallback reports and runs fp32, --precision fp32 is accepted there, and asking TensorRT for a
    precision its engine does not have is refused with the reason."""
    from fgresq_sdk.backends import create_backend
    from fgresq_sdk.backends.tensorrt_backend import read_engine_record
    from fgresq_sdk.bundle import load_bundle

    root = _engine_bundle_with_placeholder_engine(tiny_bundle, tmp_path / "engine-bundle")
    b = load_bundle(root)
    b.verify_all()
    src = load_bundle(tiny_bundle)
    assert b.precision == "fp32" and b.manifest["tensorrt"]["engine_precision"] == "fp16"
    assert b.manifest["files"]["encoder"]["sha256"] == src.manifest["files"]["encoder"]["sha256"]
    assert b.entry("engine")["path"] == "encoder.fp16.engine"
    rec = read_engine_record(b)
    assert rec["precision"] == "fp16" and rec["source_onnx_sha256"] == b.manifest["files"]["encoder"]["sha256"]

    ort = _scorer(b, backend="onnxruntime", device="cpu", precision="fp32")
    assert ort.describe()["precision"] == "fp32"
    plain = _scorer(src, backend="onnxruntime", device="cpu")
    q, sc = ort.encode(pair_images[:6])
    q0, sc0 = plain.encode(pair_images[:6])
    np.testing.assert_array_equal(sc, sc0)  # the same fp32 graph, not an fp16 one
    with pytest.raises(BackendError, match=r"runs the bundle's own precision \(fp32\), not fp16"):
        create_backend("onnxruntime", b, precision="fp16")
    with pytest.raises(BackendError, match="TensorRT engine is fp16, not fp32") as exc:
        create_backend("tensorrt", b, device="cuda", precision="fp32")
    if not importable("tensorrt"):
        assert "TensorRT is not installed" in str(exc.value)
    auto = _auto_describe(root, "cpu")
    assert (auto["backend"], auto["precision"]) == ("onnxruntime", "fp32")
    # A record with a precision no engine here has is refused by name, not half-read.
    bad = tmp_path / "bad-record"
    shutil.copytree(root, bad)
    _rewrite_record(bad, lambda r: r.update(precision="int4"))
    with pytest.raises(BackendError, match="engine precision 'int4'"):
        read_engine_record(load_bundle(bad))


def _rewrite_record(root, change) -> None:
    """Edit a bundle's engine.json and re-list its sha256 (as if it had been built that way)."""
    from fgresq_sdk.bundle import MANIFEST, sha256_file

    rec_path = root / "engine.json"
    rec = json.loads(rec_path.read_text())
    change(rec)
    rec_path.write_text(json.dumps(rec))
    manifest = json.loads((root / MANIFEST).read_text())
    manifest["files"]["engine_record"]["sha256"] = sha256_file(rec_path)
    manifest["files"]["engine_record"]["bytes"] = rec_path.stat().st_size
    (root / MANIFEST).write_text(json.dumps(manifest))


@no_gpu_driver
def test_auto_falls_back_from_an_engine_bundle_on_a_cpu_machine(tiny_bundle, tmp_path):
    root = _engine_bundle_with_placeholder_engine(tiny_bundle, tmp_path / "engine-bundle")
    d = _auto_describe(root, "auto")
    assert (d["backend"], d["device"], d["precision"]) == ("onnxruntime", "cpu", "fp32")
    assert "no CUDA device" in d["auto_skipped"]["tensorrt"]
    from fgresq_sdk.backends import create_backend
    from fgresq_sdk.bundle import load_bundle

    be = create_backend("auto", load_bundle(root), device="auto", precision="fp16")
    assert be.describe()["precision"] == "fp32" and "--precision fp16 not applied" in be.auto_reason


def _float_types(model) -> dict:
    """Element type of every tensor of an ONNX graph, after ONNX's own type inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.value_info, *g.input, *g.output]}
    types.update({t.name: t.data_type for t in g.initializer})
    for n in g.node:
        if n.op_type == "Constant":
            types.update({n.output[0]: a.t.data_type for a in n.attribute if a.name == "value"})
    return types


@pytest.mark.parametrize("fp32_head", [False, True], ids=["bundle-graph", "tensorrt-graph"])
def test_fp16_onnx_keeps_its_fp32_islands(tiny_bundle, tmp_path, pair_images, fp32_head):
    """What TensorRT's strongly typed build and ONNX Runtime run: fp16 towers, and in fp32 every
    LayerNormalization (opset 17 exports one node per nn.LayerNorm) with its γ/β, softmax, sigmoid and
    reduction, the output nodes, and for the TensorRT graph every node after the towers; fp32 graph input and
    outputs. Checked on the types ONNX infers for every tensor, and on the scores."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto

    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.export.half import BLOCKED_OPS, TOWER_PREFIXES, half_bundle, half_file, head_nodes, output_nodes
    from fgresq_sdk.preprocess import preprocess

    src = load_bundle(tiny_bundle)
    fp32 = onnx.load(str(src.path("encoder")))
    heads = set(head_nodes(fp32))
    assert {"/head/Gemm", "/Softmax", "/Sigmoid", "/prompt_mlp/Gemm", "/Concat", "/Squeeze"} <= heads
    assert not any(h.startswith(TOWER_PREFIXES) for h in heads)
    assert set(output_nodes(fp32)) == {"/Concat", "/Squeeze"}  # produce `features` and `score`
    assert "LayerNormalization" in BLOCKED_OPS
    if fp32_head:
        path = tmp_path / "encoder.fp16.onnx"
        details = half_file(src.path("encoder"), path, fp32_head=True)
    else:
        b = load_bundle(half_bundle(tiny_bundle, tmp_path / "fp16"))
        path, details = b.path("encoder"), b.manifest["conversion"]
    assert details["fp32_ops"] == BLOCKED_OPS and details["fp32_head"] is fp32_head
    fp32_nodes = heads if fp32_head else set(output_nodes(fp32))
    # beside them, the Constant nodes only fp32 nodes read (a floor or kernel of an fp32 node stays its own); the
    # tiny bundle has no low-level prior (tests/test_variants.py checks the default's)
    op_of = {n.name: n.op_type for n in fp32.graph.node}
    listed = set(details["fp32_nodes"])
    assert {n for n in listed if op_of.get(n) != "Constant"} == fp32_nodes
    fp32_nodes = listed
    half = onnx.load(str(path))
    onnx.checker.check_model(half)  # topologically sorted, consistently typed
    types = _float_types(half)
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16)
    islands = [n for n in half.graph.node if n.op_type in BLOCKED_OPS or n.name in fp32_nodes]
    counted = {op: sum(n.op_type == op for n in islands) for op in ("LayerNormalization", "Softmax", "Sigmoid")}
    # tiny config: 2 towers × (ln_pre, 2 blocks × 2, ln_post) = 12 LayerNorms; 4 attention + 1 prompt softmax.
    assert counted["LayerNormalization"] == 12 and counted["Softmax"] == 5 and counted["Sigmoid"] >= 2, counted
    for n in islands:
        for name in [*n.input, *n.output]:
            if name and types.get(name) in floats:
                assert types[name] == TensorProto.FLOAT, f"{n.op_type} {n.name}: {name} is not fp32"
    inits = {i.name for i in half.graph.initializer}
    ln_params = [i for n in half.graph.node if n.op_type == "LayerNormalization" for i in n.input[1:]]
    assert ln_params and all(i in inits and types[i] == TensorProto.FLOAT for i in ln_params)  # stored fp32
    head_gemms = [n for n in half.graph.node if n.name in heads and n.op_type == "Gemm"]
    assert head_gemms and all(types[n.input[1]] == (TensorProto.FLOAT if fp32_head else TensorProto.FLOAT16)
                              for n in head_gemms)
    # No fp16 round trip between two fp32 nodes: no Cast(fp32) reads a Cast(fp16).
    producer = {o: n for n in half.graph.node for o in n.output}
    for n in half.graph.node:
        if n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT:
            p = producer.get(n.input[0])
            assert not (p is not None and p.op_type == "Cast" and p.attribute[0].i == TensorProto.FLOAT16), n.name
    heavy = [n for n in half.graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and n.name.startswith(TOWER_PREFIXES)]
    assert heavy and all(types[n.input[1]] == TensorProto.FLOAT16 for n in heavy)  # the towers' FLOPs are fp16
    assert [types[i.name] for i in half.graph.input] == [TensorProto.FLOAT]
    assert [types[o.name] for o in half.graph.output] == [TensorProto.FLOAT, TensorProto.FLOAT]
    if fp32_head:  # its numbers: onnxruntime on the CPU, without the layout optimiser that crashes on it
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"],
                                    disabled_optimizers=["NchwcTransformer"])
        x = np.stack([preprocess(a, src.preprocess_spec) for a in pair_images])
        q, s = sess.run(None, {"image": x})
        ref = _scorer(tiny_bundle, backend="onnxruntime", device="cpu")
        q_ref, s_ref = ref.backend.encode(x)
        assert float(np.max(np.abs(s - s_ref))) <= TOL["fp16"]
        assert float(np.mean(_decisions(ref.head, q) == _decisions(ref.head, q_ref))) >= MIN_AGREEMENT


def test_torch_zero_image_batch(tiny_bundle):
    from fgresq_sdk.backends.torch_backend import TorchBackend
    from fgresq_sdk.bundle import load_bundle

    be = TorchBackend(load_bundle(tiny_bundle), device="cpu")
    q, s = be.encode(np.zeros((0, 3, 224, 224), np.float32))
    assert q.shape == (0, be.feature_dim) and s.shape == (0,) and q.dtype == s.dtype == np.float32


def test_torch_compile_on_cpu_static_buckets_match_eager(tiny_bundle, pair_images):
    """torch.compile (Inductor's C++ backend here) with one static bucket: batches of 1…4 are padded to 4 and
    9 images are cut 4+4+1, all without a recompile, and the scores match eager fp32."""
    import torch

    from fgresq_sdk.backends import create_backend
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.preprocess import preprocess

    b = load_bundle(tiny_bundle)
    x = np.stack([preprocess(a, b.preprocess_spec) for a in pair_images[:9]])
    eager = create_backend("torch", b, device="cpu")
    from fgresq_sdk.backends.torch_backend import TorchBackend

    comp = TorchBackend(b, device="cpu", compile=True, compile_batch_sizes=(4,))
    assert comp.thread_safe is False
    q_e, s_e = eager.encode(x)
    q_c, s_c = comp.encode(x[:4])  # the compile
    d = comp.describe()["compile"]
    assert d["buckets"] == [4] and d["dynamic"] is False and set(d["first_call_s"]) == {"4"}
    cfg = torch._dynamo.config
    saved = cfg.error_on_recompile
    cfg.error_on_recompile = True  # any recompile from here on is an error
    try:
        for n in (1, 3, 4, 9):
            q_c, s_c = comp.encode(x[:n])
            assert q_c.shape == (n, eager.feature_dim) and s_c.shape == (n,)
            assert float(np.max(np.abs(s_c - s_e[:n]))) <= TOL["fp16"]
            assert float(np.max(np.abs(q_c - q_e[:n]))) <= 50 * TOL["fp16"]
        q0, s0 = comp.encode(x[:0])
        assert q0.shape == (0, eager.feature_dim) and s0.shape == (0,)
    finally:
        cfg.error_on_recompile = saved
    assert set(comp.describe()["compile"]["first_call_s"]) == {"4"}


def test_compile_option_errors(tiny_bundle, tmp_path):
    from cli_runner import run_cli
    from fgresq_sdk.backends import create_backend
    from fgresq_sdk.backends.torch_backend import TorchBackend
    from fgresq_sdk.bundle import load_bundle

    b = load_bundle(tiny_bundle)
    for name in ("onnxruntime", "tensorrt"):
        with pytest.raises(BackendError, match="applies to the torch backend"):
            create_backend(name, b, compile=True)
    with pytest.raises(BackendError, match="unknown torch.compile mode"):
        TorchBackend(b, compile=True, compile_mode="fastest")
    with pytest.raises(BackendError, match="only used with compile=True"):
        TorchBackend(b, compile_mode="default")
    be = create_backend("auto", b, device="cpu", compile=True)
    assert be.name == "onnxruntime" and "torch.compile not applied" in be.auto_reason
    img = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (90, 120, 30)).save(img)
    run = run_cli("score", "a.png", "--model", tiny_bundle, "--backend", "onnxruntime", "--compile", cwd=tmp_path)
    assert run.rc == 2 and "applies to the torch backend" in run.err


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
def test_cli_score_torch_cuda_fp16_cuda_graphs(tiny_bundle, gpu_photos):
    """The same options through `fgresq-sdk score`: accepted, applied, and the scores match fp32 on the CPU."""
    import os

    from cli_runner import run_cli
    from fgresq_sdk.scorer import Scorer

    photo_paths = list(gpu_photos)
    photo_dir = Path(os.path.commonpath([str(p.parent) for p in photo_paths]))
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


@needs_cuda
def test_cuda_graphs_zero_image_batch(tiny_bundle):
    from fgresq_sdk.backends.torch_backend import TorchBackend
    from fgresq_sdk.bundle import load_bundle

    be = TorchBackend(load_bundle(tiny_bundle), device="cuda", precision="fp16", cuda_graphs=True,
                      graph_batch_sizes=(2,))
    q, s = be.encode(np.zeros((0, 3, 224, 224), np.float32))  # was an IndexError
    assert q.shape == (0, be.feature_dim) and s.shape == (0,)
    assert be.graphed.graphs == {}  # nothing captured for nothing


@needs_cuda
def test_scorer_torch_cuda_fp16_compile(tiny_bundle, reference, pair_images):
    """Scorer(backend='torch', device='cuda', precision='fp16', compile=True): Inductor's Triton kernels on the
    cast model, one static bucket per batch size met, within fp16's tolerance of the fp32 CPU reference."""
    from fgresq_sdk.backends.torch_backend import DEFAULT_GRAPH_BATCHES

    s = _scorer(tiny_bundle, backend="torch", device="cuda", precision="fp16", compile=True)
    d = s.describe()
    assert (d["backend"], d["device"], d["precision"]) == ("torch", "cuda", "fp16")
    assert d["compile"]["buckets"] == list(DEFAULT_GRAPH_BATCHES) and s.thread_safe is False
    _check(s, reference, pair_images, TOL["fp16"])  # 24 images in batches of 8
    assert set(s.describe()["compile"]["first_call_s"]) == {"8"}


@needs_cuda
def test_compile_with_cuda_graphs_matches_eager_fp32(tiny_bundle, pair_images):
    """Compiled fp32 inside captured CUDA graphs against eager fp32 on the same GPU (fp16's tolerance, as the
    issue asks of compile), with no recompile once each bucket is compiled."""
    import torch

    from fgresq_sdk.backends.torch_backend import TorchBackend
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.preprocess import preprocess

    b = load_bundle(tiny_bundle)
    x = np.stack([preprocess(a, b.preprocess_spec) for a in pair_images[:11]])
    eager = TorchBackend(b, device="cuda")
    comp = TorchBackend(b, device="cuda", compile=True, cuda_graphs=True, graph_batch_sizes=(4, 8))
    q_e, s_e = eager.encode(x)
    q_c, s_c = comp.encode(x)  # 8 + 3 padded to 4: compiles and captures both buckets
    assert float(np.max(np.abs(s_c - s_e))) <= TOL["fp16"] and float(np.max(np.abs(q_c - q_e))) <= 50 * TOL["fp16"]
    assert sorted(comp.graphed.graphs) == [4, 8] and set(comp.describe()["compile"]["first_call_s"]) == {"4", "8"}
    cfg = torch._dynamo.config
    saved, cfg.error_on_recompile = cfg.error_on_recompile, True
    try:
        again = comp.encode(x[:5])
    finally:
        cfg.error_on_recompile = saved
    assert float(np.max(np.abs(again[1] - s_e[:5]))) <= TOL["fp16"]


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
    import torch

    from fgresq_sdk.backends import create_backend
    from fgresq_sdk.backends.tensorrt_backend import read_engine_record
    from fgresq_sdk.bundle import load_bundle

    root, cache = engine_bundle
    b = load_bundle(root)
    assert b.precision == "fp32" and b.has("engine") and b.has("engine_record")  # the bundle's ONNX is fp32
    rec = read_engine_record(b)
    assert rec["precision"] == "fp16" and b.manifest["tensorrt"]["engine_precision"] == "fp16"
    assert rec["network"] == "strongly typed" and rec["tf32"] is False
    assert rec["engine_onnx"]["precision"] == "fp16" and "LayerNormalization" in rec["engine_onnx"]["conversion"]["fp32_ops"]
    assert rec["profile"]["min"][0] == 2 and rec["profile"]["max"][0] == 8
    assert rec["source_onnx_sha256"] == b.manifest["files"]["encoder"]["sha256"]
    assert "cuda_runtime" not in rec and "tensorrt_cuda" in rec
    assert cache.is_file() and cache.stat().st_size > 0
    s = _scorer(root, backend="tensorrt", device="cuda")
    d = s.backend.describe()
    assert (d["backend"], d["precision"]) == ("tensorrt", "fp16") and s.thread_safe is False
    assert s.backend.stream.cuda_stream != torch.cuda.default_stream(0).cuda_stream  # never the legacy stream
    _check(s, reference, pair_images, TOL["fp16"])
    one = s.backend.encode(np.zeros((1, 3, 224, 224), np.float32))  # padded up to the min batch
    assert one[0].shape[0] == 1 and one[1].shape == (1,)
    none = s.backend.encode(np.zeros((0, 3, 224, 224), np.float32))
    assert none[0].shape == (0, s.backend.feature_dim) and none[1].shape == (0,)
    auto = _scorer(root, backend="auto", device="auto")
    assert auto.backend.name == "tensorrt" and auto.describe()["precision"] == "fp16"
    # --precision fp32 is the bundle's encoder.onnx, not this engine: TensorRT says why, auto moves on.
    with pytest.raises(BackendError, match="TensorRT engine is fp16, not fp32"):
        create_backend("tensorrt", b, device="cuda", precision="fp32")
    other = create_backend("auto", b, device="auto", precision="fp32")
    assert other.name != "tensorrt" and "fp16, not fp32" in other.describe()["auto_skipped"]["tensorrt"]


@needs_trt
def test_tensorrt_fp32_engine_is_ieee_fp32(tiny_bundle, engine_bundle, reference, pair_images, tmp_path):
    """An fp32 engine with TF32 cleared holds fp32's tolerance against the CPU reference (with TF32 it would
    round every matmul input to 10 bits); it reuses the timing cache the fp16 build wrote."""
    import json as _json

    from fgresq_sdk.export.tensorrt_build import build_engine

    root = build_engine(tiny_bundle, tmp_path / "fp32-trt", fp16=False, batch=(1, 8, 8), workspace_gb=2,
                        timing_cache=engine_bundle[1])
    rec = _json.loads((root / "engine.json").read_text())
    assert rec["precision"] == "fp32" and rec["tf32"] is False and rec["timing_cache"]["reused"] is True
    assert rec["engine_onnx"]["sha256"] == rec["source_onnx_sha256"]  # built from the fp32 graph itself
    s = _scorer(root, backend="tensorrt", device="cuda")
    _check(s, reference, pair_images, TOL["fp32"], min_agreement=1.0)


@needs_trt
def test_tensorrt_backend_serialises_threads(engine_bundle, pair_images):
    import concurrent.futures as cf

    from fgresq_sdk.backends.tensorrt_backend import TensorRTBackend
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.preprocess import preprocess

    b = load_bundle(engine_bundle[0])
    be = TensorRTBackend(b, device="cuda")
    x = np.stack([preprocess(a, b.preprocess_spec) for a in pair_images[:8]])
    want = be.encode(x)[1]
    with cf.ThreadPoolExecutor(4) as pool:  # straight at the backend, no Scorer lock in between
        got = list(pool.map(lambda k: be.encode(x[k:k + 3])[1], range(6)))
    for k, g in enumerate(got):
        np.testing.assert_allclose(g, want[k:k + 3], rtol=0, atol=1e-3)


@needs_trt
def test_tensorrt_record_mismatch_is_refused(engine_bundle, tmp_path):
    from fgresq_sdk.backends import create_backend
    from fgresq_sdk.bundle import load_bundle

    copy = tmp_path / "elsewhere"
    shutil.copytree(engine_bundle[0], copy)
    _rewrite_record(copy, lambda r: r["gpu"].update(name="NVIDIA Some Other GPU"))  # as if built elsewhere
    b = load_bundle(copy)
    with pytest.raises(BackendError, match="not portable") as exc:
        create_backend("tensorrt", b, device="cuda")
    assert "NVIDIA Some Other GPU" in str(exc.value)
    auto = create_backend("auto", b, device="auto")  # auto skips the engine and says why
    assert auto.name != "tensorrt" and "not portable" in auto.describe()["auto_skipped"]["tensorrt"]
    assert auto.describe()["precision"] == "fp32"  # what the fallback runs: the bundle's fp32 encoder.onnx or torch fp32
