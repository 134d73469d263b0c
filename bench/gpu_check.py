"""One prepared GPU check: the GPU tests, then a throughput benchmark, all written as JSON to --out.

Stages (each a subprocess with its own time limit; a failing or timed-out stage is recorded and the
next one runs; the whole run keeps inside --budget seconds):

  env          torch/CUDA/GPU, onnxruntime providers, TensorRT, open_clip: what this machine can run
  pytest       tests/test_gpu.py (the parity tests; log in pytest_gpu.log)
  bench-tiny   the compact test config  (fgresq-vit-tiny)
  bench-paper  the paper config         (fgresq-vit-b16), random weights

A bench stage builds the model with random weights (seed 0, heads widened ×20 as in the tests so scores
spread), counts its FLOPs per image with torch.utils.flop_counter.FlopCounterMode (batch 1, math
attention so the attention products are counted too; GMAC = FLOP/2), exports it to a bundle on the fly
when an ONNX-based variant (onnxruntime-cuda, TensorRT) can run, and times every variant that can run
here at batch 1, 8, 32, 64, 128, 256:

  torch-{fp32,fp16,bf16}            eager, and with CUDA graphs (one graph per batch size)
  onnxruntime-cuda-{fp32,fp16}      when onnxruntime-gpu is installed (fp16 = export/half.py bundle)
  tensorrt-fp16                     when TensorRT is installed (profile 1/32/256, shared timing cache)

For each: images/s of the model alone (device tensors in and out: `encode_tensor`, where the backend has
one) and of `encode()` (numpy in and out, host↔device copies included), achieved TFLOP/s, and its share
of the H200's dense bf16 bound (790 TFLOP/s as measured on this machine kind; the datasheet says ~990)
— fp32 rows also against the ~67 TFLOP/s fp32 (non-tensor-core) bound, since torch keeps TF32 off for
matmuls by default — plus accuracy against torch fp32 on the same GPU (max |Δscore|, pair agreement on
16 synthetic photos). The summary gives fp16/fp32 and bf16/fp32 throughput ratios per batch.

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
CPU_BATCHES = (1, 2)
CONFIGS = {"tiny": "fgresq-vit-tiny", "paper": "fgresq-vit-b16"}
STAGE_LIMITS = {"env": 60, "pytest": 200, "bench-tiny": 100, "bench-paper": 240}


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ================================================================ stage: env
def stage_env(args, out: dict) -> None:
    import importlib.util

    def has(m):
        try:
            return importlib.util.find_spec(m) is not None
        except (ImportError, ValueError):
            return False

    out.update(python=platform.python_version(), platform=platform.platform(), cpus=os.cpu_count())
    try:
        out["nvidia_smi"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,compute_cap,clocks.max.sm",
             "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        out["nvidia_smi"] = f"unavailable ({exc})"
    import torch

    out["torch"] = torch.__version__
    out["torch_cuda"] = torch.version.cuda
    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": p.name, "compute_capability": f"{p.major}.{p.minor}",
                      "memory_gib": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count}
        out["matmul_tf32"] = torch.backends.cuda.matmul.allow_tf32
        out["cudnn_tf32"] = torch.backends.cudnn.allow_tf32
    import onnxruntime as ort

    out["onnxruntime"] = ort.__version__
    out["onnxruntime_providers"] = ort.get_available_providers()
    out["tensorrt"] = None
    if has("tensorrt"):
        try:
            import tensorrt as trt

            out["tensorrt"] = trt.__version__
        except Exception as exc:  # noqa: BLE001
            out["tensorrt"] = f"import failed: {exc}"
    out["open_clip"] = has("open_clip")
    from fgresq_sdk.backends.probe import cuda_driver_devices

    out["cuda_driver_probe"] = list(cuda_driver_devices())
    import fgresq_sdk.backends  # noqa: F401 - the package imports here

    out["fgresq_sdk"] = fgresq_sdk.backends.__file__


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


def _timeit(fn, sync, min_time: float, max_iters: int, warmup: int) -> dict:
    """Seconds per call: warm up (graph capture, kernel choice), size the loop from the last warm-up call,
    then time that many calls with one synchronisation at the end (GPU work stays queued meanwhile)."""
    for _ in range(max(1, warmup) - 1):
        fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    estimate = max(time.perf_counter() - t0, 1e-6)
    iters = int(min(max_iters, max(3, min_time / estimate)))
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync()
    return {"iters": iters, "seconds_per_call": (time.perf_counter() - t0) / iters}


def _accuracy(head, ref, out) -> dict:
    import itertools

    import numpy as np

    q_ref, s_ref = ref
    q, s = out
    pairs = list(itertools.combinations(range(len(s)), 2))
    i, j = map(list, zip(*pairs))
    agree = float(np.mean(head.all_pairs_probs(q)[i, j].argmax(-1) == head.all_pairs_probs(q_ref)[i, j].argmax(-1)))
    return {"max_abs_dscore": float(np.max(np.abs(s - s_ref))), "pair_agreement": agree, "pairs": len(pairs)}


def stage_bench(args, out: dict, config_key: str, flush) -> None:
    import numpy as np
    import torch

    from fgresq_sdk.backends.probe import importable
    from fgresq_sdk.bench import synthetic_photos
    from fgresq_sdk.heads import CompareHeadNP
    from fgresq_sdk.preprocess import preprocess

    deadline = time.monotonic() + args.stage_budget - 5
    gpu = torch.cuda.is_available() and not args.cpu
    device = "cuda" if gpu else "cpu"
    batches = GPU_BATCHES if gpu else CPU_BATCHES
    cfg_name = CONFIGS[config_key]
    if args.cpu and config_key == "paper":
        batches = (1,)
    out.update(config=cfg_name, device=device, batches=list(batches),
               bound={"bf16_dense_tflops": BF16_DENSE_TFLOPS, "fp32_tflops": FP32_TFLOPS,
                      "source": "bf16: 8192³ bf16 matmul measured on this H200 kind (769-798 TFLOP/s; datasheet "
                                "~990); fp32: datasheet, no tensor cores (torch keeps TF32 off for matmuls)"},
               variants={}, errors={})
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
        onnx_variants += [("onnxruntime-cuda-fp32", "onnxruntime", "fp32"), ("onnxruntime-cuda-fp16", "onnxruntime", "fp16")]
    elif not gpu:  # dry run: exercise the same path on the CPU provider
        onnx_variants += [("onnxruntime-cpu-fp32", "onnxruntime", "fp32"), ("onnxruntime-cpu-fp16", "onnxruntime", "fp16")]
    else:
        out["errors"]["onnxruntime-cuda"] = "skipped: onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu not installed)"
    if trt_ok:
        onnx_variants.append(("tensorrt-fp16", "tensorrt", "fp16"))
    elif gpu:
        out["errors"]["tensorrt"] = "skipped: TensorRT is not installed"
    else:
        out["errors"]["tensorrt"] = "skipped: needs a CUDA GPU and TensorRT"
    if args.cpu and config_key == "paper":
        onnx_variants = []  # dry run: FLOP count and one torch row are enough for the paper config
    bundles = {}
    if onnx_variants:
        try:
            from fgresq_sdk.export.onnx_export import export_bundle

            t0 = time.perf_counter()
            bundles["fp32"] = export_bundle(model, work / "fp32", source="gpu_check random init seed 0",
                                            include_checkpoint=False)
            out["export_s"] = round(time.perf_counter() - t0, 2)
            if any(p == "fp16" and b == "onnxruntime" for _, b, p in onnx_variants):
                from fgresq_sdk.export.half import half_bundle

                bundles["fp16"] = half_bundle(bundles["fp32"], work / "fp16")
        except Exception as exc:  # noqa: BLE001 - record and go on with torch
            out["errors"]["export"] = f"{type(exc).__name__}: {exc}"
            onnx_variants = []
    flush()

    def sync():
        if gpu:
            torch.cuda.synchronize()

    from fgresq_sdk.backends.torch_backend import TorchBackend

    model = model.to(device)
    ref_backend = TorchBackend(model=model, device=device, precision="fp32")
    ref = ref_backend.encode(acc_x)
    min_time = 0.2 if gpu else 0.05
    max_iters = 50 if gpu else 3

    def make_torch(precision, graphs):
        return lambda: TorchBackend(model=model, device=device, precision=precision, cuda_graphs=graphs,
                                    graph_batch_sizes=batches)

    def make_onnx(backend, precision):
        def build():
            from fgresq_sdk.backends import create_backend
            from fgresq_sdk.bundle import load_bundle

            if backend == "tensorrt":
                from fgresq_sdk.export.tensorrt_build import build_engine

                t0 = time.perf_counter()
                root = build_engine(bundles["fp32"], work / "trt", fp16=True, batch=(1, 32, max(batches)),
                                    workspace_gb=8, timing_cache=work.parent / "fgresq-gpu-check-trt.cache",
                                    force=True)
                out.setdefault("tensorrt_build", {})["seconds"] = round(time.perf_counter() - t0, 2)
                out["tensorrt_build"]["record"] = json.loads((root / "engine.json").read_text())
                return create_backend("tensorrt", load_bundle(root), device="cuda")
            return create_backend("onnxruntime", load_bundle(bundles[precision]), device=device)
        return build

    variants = []
    for precision in ("fp32", "fp16", "bf16"):
        variants.append((f"torch-{precision}", make_torch(precision, False)))
        if gpu:
            variants.append((f"torch-{precision}-graphs", make_torch(precision, True)))
    if args.cpu and config_key == "paper":
        variants = variants[:1]
    elif not gpu:
        out["errors"]["torch-graphs"] = "skipped: CUDA graphs need a GPU"
    variants += [(label, make_onnx(backend, precision)) for label, backend, precision in onnx_variants]

    try:
        _run_variants(variants, out, deadline, config_key, head, ref, acc_x, batches, size, flop, gpu, device,
                      sync, min_time, max_iters, flush)
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    out["ratios"] = ratios(out["variants"])


def _run_variants(variants, out, deadline, config_key, head, ref, acc_x, batches, size, flop, gpu, device,
                  sync, min_time, max_iters, flush) -> None:
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    for label, build in variants:
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
            row["describe"] = backend.describe()
            row["accuracy_vs_torch_fp32"] = _accuracy(head, ref, backend.encode(acc_x))
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
                    m = _timeit(lambda: backend.encode_tensor(x_dev), sync, min_time, max_iters, warmup=2)
                    r["model_ips"] = bs / m["seconds_per_call"]
                    r["model_ms"] = 1000 * m["seconds_per_call"]
                    r["model_iters"] = m["iters"]
                e = _timeit(lambda: backend.encode(x_np), sync, min_time, max(3, max_iters // 5), warmup=1)
                r["encode_ips"] = bs / e["seconds_per_call"]
                r["encode_ms"] = 1000 * e["seconds_per_call"]
                ips = r.get("model_ips", r["encode_ips"])
                r["tflops"] = ips * flop / 1e12
                r["share_of_bf16_bound"] = r["tflops"] / BF16_DENSE_TFLOPS
                if label.endswith("fp32") or "-fp32-" in label:
                    r["share_of_fp32_bound"] = r["tflops"] / FP32_TFLOPS
                if gpu:
                    r["gpu_peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
                row["rows"].append(r)
                flush()
        except Exception as exc:  # noqa: BLE001 - one variant failing must not stop the others
            row["error"] = f"{type(exc).__name__}: {exc}"
            row["traceback"] = traceback.format_exc(limit=6)
            log(f"{config_key}: {label} failed: {row['error']}")
        finally:
            backend = None  # noqa: F841 - drop the model copy before the next variant
            if gpu:
                torch.cuda.empty_cache()
            flush()


def ratios(variants: dict) -> dict:
    """Throughput ratios per batch (model-only where timed): each reduced precision over fp32 (eager and
    graphs), and graphs over eager per precision."""
    def ips(label):
        rows = variants.get(label, {}).get("rows", [])
        return {r["batch"]: r.get("model_ips", r.get("encode_ips")) for r in rows}

    def ratio(num, den):
        a, b = ips(num), ips(den)
        return {k: round(a[k] / b[k], 3) for k in sorted(set(a) & set(b))}

    out = {}
    for suffix in ("", "-graphs"):
        for p in ("fp16", "bf16"):
            out[f"torch-{p}{suffix}/torch-fp32{suffix}"] = ratio(f"torch-{p}{suffix}", f"torch-fp32{suffix}")
    for p in ("fp32", "fp16", "bf16"):
        out[f"torch-{p} graphs/eager"] = ratio(f"torch-{p}-graphs", f"torch-{p}")
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
    try:
        with open(log_path, "w") as f:
            res = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, timeout=limit)
        status = "ok" if res.returncode == 0 else "failed"
        rc = res.returncode
    except subprocess.TimeoutExpired:
        status, rc = "timeout", None
    text = log_path.read_text(errors="replace")
    summary = [ln.strip("= ") for ln in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", ln)]
    outcomes = {}
    for ln in text.splitlines():
        m = re.match(r"^(PASSED|FAILED|SKIPPED|ERROR)\s+(?:\[\d+\]\s+)?(\S+)", ln)
        if m:
            outcomes.setdefault(m.group(1).lower(), []).append(m.group(2))
    return {"status": status, "returncode": rc, "seconds": round(time.perf_counter() - t0, 1),
            "summary": summary[-1] if summary else None, "outcomes": outcomes, "log": log_path.name}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "out" / "gpu_check"))
    ap.add_argument("--budget", type=float, default=360.0, help="seconds for the whole run")
    ap.add_argument("--cpu", action="store_true", help="dry run on the CPU at tiny sizes")
    ap.add_argument("--stages", default="env,pytest,bench-tiny,bench-paper")
    ap.add_argument("--stage", help=argparse.SUPPRESS)
    ap.add_argument("--stage-out", help=argparse.SUPPRESS)
    ap.add_argument("--stage-budget", type=float, default=120.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stage:
        return run_stage_child(args)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    report = {"started": now(), "mode": "cpu-dry-run" if args.cpu else "gpu", "budget_s": args.budget,
              "repo": str(REPO), "stages": {}}
    report_path = out_dir / "gpu_check.json"

    def save():
        report_path.write_text(json.dumps(report, indent=1, default=str))

    for name in [s for s in args.stages.split(",") if s]:
        left = deadline - time.monotonic()
        limit = min(STAGE_LIMITS.get(name, 120), left - 5)
        if limit < 15:
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
                   "--stage-budget", str(limit), "--out", str(out_dir)] + (["--cpu"] if args.cpu else [])
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
                top = max(rows, key=lambda r: r.get("model_ips", r.get("encode_ips", 0)))
                best[label] = {"best_ips": round(top.get("model_ips", top.get("encode_ips")), 1),
                               "at_batch": top["batch"], "share_of_bf16_bound": round(top["share_of_bf16_bound"], 4),
                               "max_abs_dscore": (v.get("accuracy_vs_torch_fp32") or {}).get("max_abs_dscore")}
            elif v.get("error"):
                best[label] = {"error": v["error"]}
        s[key] = {"gmac_per_image": round(st.get("flops", {}).get("gmac_per_image", 0), 3), "variants": best,
                  "ratios": st.get("ratios"), "skipped": st.get("errors")}
    return s


def print_summary(report: dict) -> None:
    print(json.dumps(report["summary"], indent=1, default=str))


if __name__ == "__main__":
    sys.exit(main())
