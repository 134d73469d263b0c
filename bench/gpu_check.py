"""One prepared GPU check: the GPU tests, then a benchmark, all written as JSON (and a Markdown table) to --out.

Stages (each a subprocess with its own time limit; a failing or timed-out stage is recorded and the
next one runs; the whole run keeps inside --budget seconds, and the last stage gets whatever is left):

  env          software and hardware: torch/CUDA/cuDNN/Triton, driver, GPU, onnxruntime providers,
               TensorRT (and the CUDA it was built for), open_clip: what this machine can run
  pytest       tests/test_gpu.py (the parity tests; log in pytest_gpu.log)
  bench-default  the embedded default's config (fgresq-compact-cnn-ms2: what `fgresq-sdk rank` runs)
  bench-paper    the paper config                (fgresq-vit-b16)
  bench-tiny     the compact test config         (fgresq-vit-tiny; not in the default stages: launch-bound,
                 it says little about the GPU), all three with random weights

Time on the H200 (2026-12-04, torch 2.11): env 9 s, pytest 168 s, bench-paper 55 s for eager + CUDA graphs and
~200 s more for its three compile rows, bench-tiny ~115 s. One call of gpu_check.sh (540 s) holds the default
stages with the paper's compile rows cut short; a second call `--stages env,bench-paper --variants compile`
(~230 s) gives them. Plan two calls, or name the stages.

A bench stage builds the model with random weights (seed 0, heads widened ×20 as in the tests so scores
spread), counts its FLOPs per image with torch.utils.flop_counter.FlopCounterMode (batch 1, math
attention so the attention products are counted too; GMAC = FLOP/2), exports it to a bundle when an
ONNX-based variant (onnxruntime-cuda, TensorRT) can run, builds the TensorRT engines *first* (before any
timing, so a long engine build is never what the stage budget cuts off), and times every variant that
can run here, in priority order, at batch 1, 8, 32, 64, 128, 256 (compiled variants at --compile-batches):

  torch-{fp32,fp16,bf16}            eager
  torch-{fp32,fp16,bf16}-graphs     one CUDA graph per batch size
  torch-{fp32,fp16,bf16}-compile    torch.compile (Inductor/Triton), one static bucket per batch size
  onnxruntime-cuda-{fp32,fp16}      when onnxruntime-gpu is installed (fp16 = export/half.py bundle)
  tensorrt-{fp16,fp32}              when TensorRT is installed (profile 1/32/256, shared timing cache)

What each row reports (what trtexec / perf_analyzer users look for):
  latency_ms p50/p90/p99/mean   per call, each call synchronised (device tensors in and out: `encode_tensor`)
  ips                           throughput, back-to-back calls with one synchronisation at the end
  split_ms                      host→device copy of the batch, compute (latency p50), device→host of the
                                outputs, each timed on its own (numpy in/out `encode` = h2d + compute + d2h)
  encode_ms, encode_ips         `encode()` end to end from pageable numpy (what the SDK does per batch)
  tflops, share_of_bf16_bound   achieved FLOP/s against the H200's dense bf16 bound (790 TFLOP/s measured on
                                this machine kind; datasheet ~990); fp32 rows also against ~67 TFLOP/s fp32
  gpu_peak_mib                  torch's allocator peak in the row; device_used_mib: the whole device
                                (TensorRT's own memory is not torch's)
plus, per variant: setup time (engine build, compile times per bucket), and parity against torch fp32 on the
same GPU (max |Δscore|, pair-decision agreement on 16 synthetic photos). The summary gives reduced/fp32,
graphs/eager and compile/eager throughput ratios per batch; gpu_table.md is the README table.

  python bench/gpu_check.py --out DIR            # on a GPU machine (bench/gpu_check.sh sets it up)
  python bench/gpu_check.py --cpu --out DIR      # dry run on a CPU: same stages, tiny sizes
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BF16_DENSE_TFLOPS = 790.0  # H200, dense bf16 matmul, measured on this machine kind (datasheet ~990)
FP32_TFLOPS = 67.0  # H100/H200 datasheet fp32 without tensor cores
GPU_BATCHES = (1, 8, 32, 64, 128, 256)
COMPILE_BATCHES = (1, 32, 256)
CPU_BATCHES = (1, 2)
CONFIGS = {"default": "fgresq-compact-cnn-ms2", "paper": "fgresq-vit-b16", "tiny": "fgresq-vit-tiny"}
# caps; the last stage gets the rest
STAGE_LIMITS = {"env": 60, "pytest": 200, "bench-default": 90, "bench-tiny": 90, "bench-paper": 300}
MIN_STAGE_S = 15


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _version(dist: str):
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


# ================================================================ stage: env
def software_versions() -> dict:
    """Versions of everything a GPU number depends on (also written into each bench stage)."""
    from fgresq_sdk.backends.probe import importable  # gpu_check.sh installs the package before this runs

    out = {"python": platform.python_version(), "platform": platform.platform()}
    import torch

    out.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
               cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None)
    for dist in ("triton", "onnxruntime", "onnxruntime-gpu", "onnx", "numpy", "pillow", "open_clip_torch",
                 "fgresq-sdk"):
        out[dist] = _version(dist)
    from fgresq_sdk.backends.probe import cuda_driver_version

    out["cuda_driver"] = cuda_driver_version()
    out["tensorrt"] = None
    if importable("tensorrt"):
        try:
            import tensorrt as trt

            from fgresq_sdk.backends.tensorrt_backend import installed_tensorrt_cuda

            out["tensorrt"] = trt.__version__
            out["tensorrt_cuda"] = installed_tensorrt_cuda(trt.__version__)
        except Exception as exc:  # noqa: BLE001
            out["tensorrt"] = f"import failed: {exc}"
    return out


def stage_env(args, out: dict) -> None:
    from fgresq_sdk.backends.probe import importable

    out.update(software_versions(), cpus=os.cpu_count())
    try:
        out["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap,clocks.max.sm",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        out["nvidia_smi"] = f"unavailable ({exc})"
    import torch

    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                      "memory_gib": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count}
        out["matmul_tf32"] = torch.backends.cuda.matmul.allow_tf32
    import onnxruntime as ort

    out["onnxruntime_providers"] = ort.get_available_providers()
    out["modules"] = {m: importable(m)
                      for m in ("open_clip", "torchvision", "skimage", "pytest", "tensorrt", "triton")}
    from fgresq_sdk.backends.probe import cuda_driver_devices

    out["cuda_driver_probe"] = list(cuda_driver_devices())
    import fgresq_sdk

    out["fgresq_sdk_file"] = fgresq_sdk.__file__


# ================================================================ stage: bench
def _random_model(cfg_name: str):
    import torch

    from fgresq_sdk.model import FGResQ

    torch.manual_seed(0)
    model = FGResQ(cfg_name).eval()
    with torch.no_grad():
        model.compare_head.weight.mul_(20.0)
        model.head.weight.mul_(20.0)
    return model


def count_flops(model) -> dict:
    """FLOPs of one image through the whole model (both towers and the heads), counted by torch."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    size = int(model.cfg["preprocess"]["size"])
    x = torch.zeros(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    # Grad mode on: under no_grad nn.MultiheadAttention takes a fused fast path the counter cannot see into;
    # math attention: the fused CPU attention kernel has no FLOP formula, the math path's bmm do.
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x)
    total = counter.get_total_flops()
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    return {"flop_per_image": int(total), "gflop_per_image": total / 1e9, "gmac_per_image": total / 2e9,
            "by_op": by_op, "method": "torch.utils.flop_counter.FlopCounterMode, batch 1, math SDPA"}


def percentiles(samples_s) -> dict:
    """Latency summary in ms of per-call seconds (nearest-rank percentiles, as trtexec reports them)."""
    import numpy as np

    ms = np.sort(np.asarray(samples_s, dtype=np.float64)) * 1000.0
    if ms.size == 0:
        return {}

    def rank(p):
        return float(ms[min(ms.size - 1, max(0, int(np.ceil(p / 100.0 * ms.size)) - 1))])

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "mean": float(ms.mean()), "min": float(ms[0]),
            "n": int(ms.size)}


def _latency(fn, sync, min_time: float, max_iters: int, warmup: int) -> dict:
    """Per-call latency: each call synchronised. Warm-up first (graph capture, compile, kernel choice)."""
    for _ in range(max(1, warmup)):
        fn()
    sync()
    samples = []
    t_end = time.perf_counter() + min_time
    while len(samples) < max_iters and (len(samples) < 5 or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - t0)
    return percentiles(samples)


def _throughput(fn, sync, min_time: float, max_iters: int, estimate_s: float) -> dict:
    """Back-to-back calls with one synchronisation at the end (GPU work stays queued meanwhile)."""
    iters = int(min(max_iters, max(3, min_time / max(estimate_s, 1e-6))))
    sync()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return {"iters": iters, "seconds_per_call": (time.perf_counter() - t0) / iters}


def _median_time(fn, sync, n: int = 5) -> float:
    import statistics

    out = []
    for _ in range(n):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def _accuracy(head, ref, out) -> dict:
    import itertools

    import numpy as np

    q_ref, s_ref = ref
    q, s = out
    pairs = list(itertools.combinations(range(len(s)), 2))
    i, j = map(list, zip(*pairs))
    agree = float(np.mean(head.all_pairs_probs(q)[i, j].argmax(-1) == head.all_pairs_probs(q_ref)[i, j].argmax(-1)))
    return {"max_abs_dscore": float(np.max(np.abs(s - s_ref))), "pair_agreement": agree, "pairs": len(pairs)}


def _wanted(label: str, filters: list[str]) -> bool:
    return not filters or any(f in label for f in filters)


def stage_bench(args, out: dict, config_key: str, flush) -> None:
    import numpy as np
    import torch

    from fgresq_sdk.backends.probe import importable
    from fgresq_sdk.photos import synthetic_photos
    from fgresq_sdk.heads import CompareHeadNP
    from fgresq_sdk.preprocess import preprocess

    deadline = time.monotonic() + args.stage_budget - 5
    gpu = torch.cuda.is_available() and not args.cpu
    device = "cuda" if gpu else "cpu"
    batches = GPU_BATCHES if gpu else CPU_BATCHES
    compile_batches = tuple(int(b) for b in args.compile_batches.split(",")) if gpu else (1,)
    cfg_name = CONFIGS[config_key]
    dry_paper = args.cpu and config_key == "paper"
    if dry_paper:
        batches = (1,)
    filters = [f for f in (args.variants or "").split(",") if f]
    out.update(config=cfg_name, device=device, batches=list(batches), compile_batches=list(compile_batches),
               software=software_versions(),
               bound={"bf16_dense_tflops": BF16_DENSE_TFLOPS, "fp32_tflops": FP32_TFLOPS,
                      "source": "bf16: 8192³ bf16 matmul measured on this H200 kind (769-798 TFLOP/s; datasheet "
                                "~990); fp32: datasheet, no tensor cores (torch keeps TF32 off for matmuls)"},
               variants={}, errors={})
    if gpu:
        out["gpu"] = torch.cuda.get_device_name(0)
    t0 = time.perf_counter()
    model = _random_model(cfg_name)
    out["model_build_s"] = round(time.perf_counter() - t0, 2)
    out["flops"] = count_flops(model)
    flop = out["flops"]["flop_per_image"]
    flush()
    size = int(model.cfg["preprocess"]["size"])
    head = CompareHeadNP(model.compare_head.weight.detach().double().numpy(),
                         model.compare_head.bias.detach().double().numpy())
    work = Path(tempfile.mkdtemp(prefix="fgresq-gpu-check-"))
    if not gpu:
        torch.set_num_threads(1)  # dry run: timings are not the point; avoid oversubscribing a shared CPU
    photos = synthetic_photos(16 if gpu else 4, work / "photos")
    acc_x = np.stack([preprocess(p, model.cfg["preprocess"]) for p in photos])

    # Which ONNX-based variants can run here; export once if any (the export needs the model on the CPU).
    import onnxruntime as ort

    ort_gpu = gpu and "CUDAExecutionProvider" in ort.get_available_providers()
    trt_ok = gpu and importable("tensorrt")
    onnx_variants = []
    if ort_gpu:
        onnx_variants += [("onnxruntime-cuda-fp16", "onnxruntime", "fp16"), ("onnxruntime-cuda-fp32", "onnxruntime", "fp32")]
    elif not gpu:  # dry run: exercise the same path on the CPU provider (fp32: the fp16 graph trips ORT's CPU
        onnx_variants += [("onnxruntime-cpu-fp32", "onnxruntime", "fp32")]  # layout optimiser, see test_gpu.py)
    else:
        out["errors"]["onnxruntime-cuda"] = "skipped: onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu not installed)"
    trt_variants = [("tensorrt-fp16", "fp16"), ("tensorrt-fp32", "fp32")] if trt_ok else []
    if not trt_ok:
        out["errors"]["tensorrt"] = ("skipped: TensorRT is not installed" if gpu
                                     else "skipped: needs a CUDA GPU and TensorRT")
    onnx_variants = [v for v in onnx_variants if _wanted(v[0], filters)]
    trt_variants = [v for v in trt_variants if _wanted(v[0], filters)]
    if dry_paper:
        onnx_variants, trt_variants = [], []  # dry run: FLOP count and one torch row are enough for the paper config
    bundles, engines = {}, {}
    if onnx_variants or trt_variants:
        try:
            from fgresq_sdk.export.onnx_export import export_bundle

            t0 = time.perf_counter()
            bundles["fp32"] = export_bundle(model, work / "fp32", source="gpu_check random init seed 0",
                                            include_checkpoint=False)
            out["export_s"] = round(time.perf_counter() - t0, 2)
            if any(p == "fp16" for _, _, p in onnx_variants):
                from fgresq_sdk.export.half import half_bundle

                bundles["fp16"] = half_bundle(bundles["fp32"], work / "fp16")
        except Exception as exc:  # noqa: BLE001 - record and go on with torch
            out["errors"]["export"] = f"{type(exc).__name__}: {exc}"
            onnx_variants, trt_variants = [], []
    flush()
    # TensorRT engines first: the build is the long part, and it must not be what the stage budget cuts off.
    for label, precision in trt_variants:
        if time.monotonic() > deadline - 30:
            out["errors"][label] = "skipped: stage time budget spent before the engine build"
            continue
        try:
            from fgresq_sdk.export.tensorrt_build import build_engine

            log(f"{config_key}: building the {precision} TensorRT engine")
            t0 = time.perf_counter()
            root = build_engine(bundles["fp32"], work / f"trt-{precision}", fp16=precision == "fp16",
                                batch=(1, 32, max(batches)), workspace_gb=8,
                                timing_cache=Path(tempfile.gettempdir()) / "fgresq-gpu-check-trt.cache", force=True)
            engines[precision] = root
            out.setdefault("tensorrt_build", {})[precision] = {
                "seconds": round(time.perf_counter() - t0, 2), "record": json.loads((root / "engine.json").read_text())}
        except Exception as exc:  # noqa: BLE001
            out["errors"][label] = f"engine build failed: {type(exc).__name__}: {exc}"
        flush()

    def sync():
        if gpu:
            torch.cuda.synchronize()

    from fgresq_sdk.backends.torch_backend import TorchBackend

    model = model.to(device)
    ref = TorchBackend(model=model, device=device, precision="fp32").encode(acc_x)
    min_time = 0.2 if gpu else 0.02
    max_iters = 50 if gpu else 3

    def make_torch(precision, graphs=False, compiled=False, sizes=batches):
        return lambda: TorchBackend(model=model, device=device, precision=precision, cuda_graphs=graphs,
                                    graph_batch_sizes=sizes, compile=compiled, compile_batch_sizes=sizes)

    def make_onnx(precision):
        def build():
            from fgresq_sdk.backends import create_backend
            from fgresq_sdk.bundle import load_bundle

            return create_backend("onnxruntime", load_bundle(bundles[precision]), device=device)
        return build

    def make_trt(precision):
        def build():
            from fgresq_sdk.backends import create_backend
            from fgresq_sdk.bundle import load_bundle

            return create_backend("tensorrt", load_bundle(engines[precision]), device="cuda")
        return build

    # Priority order: what the deadline cuts is at the end.
    variants = [("torch-fp32", make_torch("fp32"), batches)]
    if dry_paper:
        pass
    elif gpu:
        variants += [("torch-bf16", make_torch("bf16"), batches), ("torch-fp16", make_torch("fp16"), batches),
                     ("torch-bf16-graphs", make_torch("bf16", graphs=True), batches),
                     ("torch-fp16-graphs", make_torch("fp16", graphs=True), batches)]
        variants += [(label, make_trt(p), batches) for label, p in trt_variants if p in engines and p == "fp16"]
        variants += [("torch-bf16-compile", make_torch("bf16", compiled=True, sizes=compile_batches), compile_batches),
                     ("torch-fp16-compile", make_torch("fp16", compiled=True, sizes=compile_batches), compile_batches)]
        variants += [(label, make_onnx(p), batches) for label, _, p in onnx_variants]
        variants += [("torch-fp32-graphs", make_torch("fp32", graphs=True), batches),
                     ("torch-fp32-compile", make_torch("fp32", compiled=True, sizes=compile_batches), compile_batches)]
        variants += [(label, make_trt(p), batches) for label, p in trt_variants if p in engines and p == "fp32"]
    else:
        variants += [("torch-fp16", make_torch("fp16"), batches), ("torch-bf16", make_torch("bf16"), batches)]
        variants += [(label, make_onnx(p), batches) for label, _, p in onnx_variants]
        # One compiled row proves the path (Inductor's C++ backend on the CPU; a cold compile is ~1 min here).
        variants += [("torch-fp32-compile", make_torch("fp32", compiled=True, sizes=(1,)), (1,))]
        out["errors"]["torch-graphs"] = "skipped: CUDA graphs need a GPU"
    variants = [v for v in variants if _wanted(v[0], filters) or v[0] == "torch-fp32"]

    try:
        _run_variants(variants, out, deadline, config_key, head, ref, acc_x, size, flop, gpu, device,
                      sync, min_time, max_iters, flush)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    out["ratios"] = ratios(out["variants"])


def _run_variants(variants, out, deadline, config_key, head, ref, acc_x, size, flop, gpu, device,
                  sync, min_time, max_iters, flush) -> None:
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    for label, build, batches in variants:
        if time.monotonic() > deadline:
            out["errors"][label] = "skipped: stage time budget spent"
            continue
        log(f"{config_key}: {label}")
        row = {"rows": []}
        out["variants"][label] = row
        backend = None
        try:
            t0 = time.perf_counter()
            backend = build()
            row["setup_s"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            row["accuracy_vs_torch_fp32"] = _accuracy(head, ref, backend.encode(acc_x))
            row["first_encode_s"] = round(time.perf_counter() - t0, 2)  # compiled: includes a compile
            for bs in batches:
                if time.monotonic() > deadline:
                    row["truncated"] = "stage time budget spent"
                    break
                x_np = rng.normal(size=(bs, 3, size, size)).astype(np.float32)
                r = {"batch": bs}
                if gpu:
                    torch.cuda.reset_peak_memory_stats()
                if hasattr(backend, "encode_tensor"):
                    x_dev = torch.from_numpy(x_np).to(device)
                    lat = _latency(lambda: backend.encode_tensor(x_dev), sync, min_time, max_iters, warmup=2)
                    thr = _throughput(lambda: backend.encode_tensor(x_dev), sync, min_time, max_iters,
                                      lat["p50"] / 1000.0)
                    r["latency_ms"] = lat
                    r["ips"] = bs / thr["seconds_per_call"]
                    r["throughput_iters"] = thr["iters"]
                    q, s = backend.encode_tensor(x_dev)
                    sync()
                    h2d = _median_time(lambda: torch.from_numpy(x_np).to(device), sync)
                    d2h = _median_time(lambda: (q.cpu(), s.cpu()), sync)
                    r["split_ms"] = {"h2d": 1000 * h2d, "compute": lat["p50"], "d2h": 1000 * d2h,
                                     "note": "each timed alone; h2d from pageable numpy, as encode() copies"}
                enc = _latency(lambda: backend.encode(x_np), sync, min_time, max(5, max_iters // 5), warmup=1)
                r["encode_ms"] = enc
                r["encode_ips"] = bs / (enc["p50"] / 1000.0)
                ips = r.get("ips", r["encode_ips"])
                r["tflops"] = ips * flop / 1e12
                r["share_of_bf16_bound"] = r["tflops"] / BF16_DENSE_TFLOPS
                if "fp32" in label:
                    r["share_of_fp32_bound"] = r["tflops"] / FP32_TFLOPS
                if gpu:
                    r["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                    free, total = torch.cuda.mem_get_info()
                    r["device_used_mib"] = round((total - free) / 2**20, 1)
                row["rows"].append(r)
                flush()
            row["describe"] = backend.describe()  # after the rows: compile and graph-capture times per bucket
        except Exception as exc:  # noqa: BLE001 - one variant failing must not stop the others
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc(limit=6)
            log(f"{config_key}: {label} failed: {row['error']}")
        finally:
            backend = None  # noqa: F841 - drop the model copy before the next variant
            if gpu:
                torch.cuda.empty_cache()
            flush()


def _ips(row: dict) -> float | None:
    return row.get("ips", row.get("encode_ips"))


def ratios(variants: dict) -> dict:
    """Throughput ratios per batch: each reduced precision over fp32 (eager, graphs, compile), graphs and
    compile over eager per precision, and TensorRT over the best torch fp16 path."""
    def ips(label):
        return {r["batch"]: _ips(r) for r in variants.get(label, {}).get("rows", [])}

    def ratio(num, den):
        a, b = ips(num), ips(den)
        return {k: round(a[k] / b[k], 3) for k in sorted(set(a) & set(b)) if a[k] and b[k]}

    out = {}
    for suffix in ("", "-graphs", "-compile"):
        for p in ("fp16", "bf16"):
            out[f"torch-{p}{suffix}/torch-fp32{suffix}"] = ratio(f"torch-{p}{suffix}", f"torch-fp32{suffix}")
    for p in ("fp32", "fp16", "bf16"):
        out[f"torch-{p} graphs/eager"] = ratio(f"torch-{p}-graphs", f"torch-{p}")
        out[f"torch-{p} compile/eager"] = ratio(f"torch-{p}-compile", f"torch-{p}")
    out["onnxruntime-cuda fp16/fp32"] = ratio("onnxruntime-cuda-fp16", "onnxruntime-cuda-fp32")
    out["tensorrt-fp16/torch-fp16-graphs"] = ratio("tensorrt-fp16", "torch-fp16-graphs")
    return {k: v for k, v in out.items() if v}


# ================================================================ orchestration
def run_stage_child(args) -> int:
    """`--stage NAME --stage-out FILE`: run one stage, rewriting FILE after each step."""
    out: dict = {"started": now()}
    path = Path(args.stage_out)

    def flush():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(out, indent=1, default=str))
        tmp.replace(path)

    try:
        if args.stage == "env":
            stage_env(args, out)
        elif args.stage.startswith("bench-"):
            stage_bench(args, out, args.stage.split("-", 1)[1], flush)
        else:
            raise SystemExit(f"unknown stage {args.stage}")
        out["status"] = "ok"
    except Exception as exc:  # noqa: BLE001
        out["status"] = "error"
        out["error"] = f"{type(exc).__name__}: {exc}"
        out["traceback"] = traceback.format_exc(limit=8)
    out["finished"] = now()
    flush()
    return 0 if out["status"] == "ok" else 1


def run_pytest(args, limit: float) -> dict:
    log_path = Path(args.out) / "pytest_gpu.log"
    cmd = [sys.executable, "-m", "pytest", "tests/test_gpu.py", "-q", "-rA", "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONSAFEPATH": "1"}  # never the checkout's fgresq_sdk/ over the installed package
    try:
        with open(log_path, "w") as f:
            res = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=limit, env=env)
        status = "ok" if res.returncode == 0 else "failed"
        rc = res.returncode
    except subprocess.TimeoutExpired:
        status, rc = "timeout", None
    text = log_path.read_text(errors="replace")
    summary = [ln.strip("= ") for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    outcomes = {}
    for ln in text.splitlines():
        m = re.match(r"^(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\s+(?:\[\d+\]\s+)?(\S+)", ln)
        if m:
            outcomes.setdefault(m.group(1).lower(), []).append(m.group(2))
    return {"status": status, "returncode": rc, "seconds": round(time.perf_counter() - t0, 1),
            "summary": summary[-1] if summary else None, "outcomes": outcomes, "log": log_path.name}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "out" / "gpu_check"))
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for the whole run")
    ap.add_argument("--cpu", action="store_true", help="dry run on the CPU at tiny sizes")
    ap.add_argument("--stages", default="env,pytest,bench-default,bench-paper")
    ap.add_argument("--variants", default="", help="comma-separated substrings: time only matching variants "
                                                    "(torch-fp32, the reference, always runs)")
    ap.add_argument("--compile-batches", default=",".join(map(str, COMPILE_BATCHES)),
                    help="batch sizes of the torch.compile rows (each is one static bucket, one compile)")
    ap.add_argument("--table", metavar="JSON", help="only print the Markdown table of an existing gpu_check.json")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--stage-out", help=argparse.SUPPRESS)
    ap.add_argument("--stage-budget", type=float, default=120.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        return run_stage_child(args)
    if args.table:
        print(render_table(json.loads(Path(args.table).read_text())))
        return 0

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    report = {"started": now(), "mode": "cpu-dry-run" if args.cpu else "gpu", "budget_s": args.budget,
              "repo": str(REPO), "stages": {}}
    report_path = out_dir / "gpu_check.json"

    def save():
        report_path.write_text(json.dumps(report, indent=1, default=str))

    stages = [s for s in args.stages.split(",") if s]
    for k, name in enumerate(stages):
        left = deadline - time.monotonic()
        limit = left - 5 if k == len(stages) - 1 else min(STAGE_LIMITS.get(name, 120), left - 5)
        if limit < MIN_STAGE_S:
            report["stages"][name] = {"status": "skipped", "reason": f"run budget spent ({left:.0f}s left)"}
            save()
            continue
        log(f"stage {name} (limit {limit:.0f}s)")
        t0 = time.perf_counter()
        if name == "pytest":
            report["stages"][name] = run_pytest(args, limit)
        else:
            part = out_dir / f".{name}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--stage-out", str(part),
                   "--stage-budget", str(limit), "--out", str(out_dir), "--variants", args.variants,
                   "--compile-batches", args.compile_batches] + (["--cpu"] if args.cpu else [])
            try:
                res = subprocess.run(cmd, cwd=REPO, timeout=limit)
                status = None if res.returncode in (0, 1) else f"crashed (exit {res.returncode})"
            except subprocess.TimeoutExpired:
                status = "timeout"
            try:
                result = json.loads(part.read_text())
                part.unlink()
            except (OSError, ValueError):
                result = {}
            result["status"] = status or result.get("status", "error")
            report["stages"][name] = result
        report["stages"][name]["seconds"] = round(time.perf_counter() - t0, 1)
        log(f"stage {name}: {report['stages'][name].get('status')} in {report['stages'][name]['seconds']}s")
        save()
    report["finished"] = now()
    report["summary"] = summarize(report)
    save()
    (out_dir / "gpu_table.md").write_text(render_table(report))
    print_summary(report)
    return 0


def summarize(report: dict) -> dict:
    s = {"stages": {k: v.get("status") for k, v in report["stages"].items()}}
    py = report["stages"].get("pytest")
    if py:
        s["pytest"] = py.get("summary")
    for key in CONFIGS:
        st = report["stages"].get(f"bench-{key}")
        if not st or "variants" not in st:
            continue
        best = {}
        for label, v in st["variants"].items():
            rows = v.get("rows") or []
            if rows:
                top = max(rows, key=lambda r: _ips(r) or 0)
                best[label] = {"best_ips": round(_ips(top), 1), "at_batch": top["batch"],
                               "share_of_bf16_bound": round(top["share_of_bf16_bound"], 4),
                               "max_abs_dscore": (v.get("accuracy_vs_torch_fp32") or {}).get("max_abs_dscore")}
            elif v.get("error"):
                best[label] = {"error": v["error"]}
        s[key] = {"gmac_per_image": round(st.get("flops", {}).get("gmac_per_image", 0), 3), "variants": best,
                  "ratios": st.get("ratios"), "skipped": st.get("errors")}
    return s


def _fmt(x, spec: str = ".3g") -> str:
    return "–" if x is None else format(x, spec)


def render_table(report: dict) -> str:
    """The README's GPU table: per config a summary row per variant, then throughput/latency per batch."""
    lines = []
    env = report.get("stages", {}).get("env", {})
    if env:
        lines.append(f"GPU: {env.get('gpu', {}).get('name', env.get('nvidia_smi', '?'))}; torch {env.get('torch')} "
                     f"(CUDA {env.get('torch_cuda')}, cuDNN {env.get('cudnn')}), Triton {env.get('triton')}, "
                     f"driver CUDA {env.get('cuda_driver')}, onnxruntime {env.get('onnxruntime') or env.get('onnxruntime-gpu')}, "
                     f"TensorRT {env.get('tensorrt') or 'not installed'}; mode {report.get('mode')}.")
        lines.append("")
    for key, cfg in CONFIGS.items():
        st = report.get("stages", {}).get(f"bench-{key}")
        if not st or not st.get("variants"):
            continue
        gmac = st.get("flops", {}).get("gmac_per_image")
        lines += [f"**{cfg}** ({_fmt(gmac, '.2f')} GMAC/image, device {st.get('device')})", "",
                  "| variant | best img/s (batch) | share of bf16 bound | p50 / p99 ms at batch 1 | peak MiB at largest batch "
                  "| max abs Δscore vs torch fp32 | pair agreement |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for label, v in st["variants"].items():
            rows = v.get("rows") or []
            acc = v.get("accuracy_vs_torch_fp32") or {}
            if not rows:
                lines.append(f"| {label} | {v.get('error', 'no rows')[:80]} | | | | | |")
                continue
            top = max(rows, key=lambda r: _ips(r) or 0)
            one = next((r for r in rows if r["batch"] == 1), None)
            lat = (one or {}).get("latency_ms") or (one or {}).get("encode_ms") or {}
            lines.append(f"| {label} | {_fmt(_ips(top), '.0f')} ({top['batch']}) | {_fmt(top['share_of_bf16_bound'], '.1%')} "
                         f"| {_fmt(lat.get('p50'), '.2f')} / {_fmt(lat.get('p99'), '.2f')} | {_fmt(rows[-1].get('gpu_peak_mib'), '.0f')} "
                         f"| {_fmt(acc.get('max_abs_dscore'), '.1e')} | {_fmt(acc.get('pair_agreement'), '.1%')} |")
        batches = sorted({r["batch"] for v in st["variants"].values() for r in v.get("rows") or []})
        if batches:
            lines += ["", "img/s by batch size:", "",
                      "| variant | " + " | ".join(str(b) for b in batches) + " |",
                      "| --- |" + " --- |" * len(batches)]
            for label, v in st["variants"].items():
                by = {r["batch"]: _ips(r) for r in v.get("rows") or []}
                if by:
                    lines.append(f"| {label} | " + " | ".join(_fmt(by.get(b), '.0f') for b in batches) + " |")
        skipped = st.get("errors") or {}
        if skipped:
            lines += ["", "Not run: " + "; ".join(f"{k}: {v}" for k, v in skipped.items())]
        lines.append("")
    return "\n".join(lines) + "\n"


def print_summary(report: dict) -> None:
    print(json.dumps(report["summary"], indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
