"""`fgresq-sdk bench`: speed and accuracy of each backend/precision variant, side by side in one run.

Model-only timing feeds pre-normalised tensors straight to the backend; end-to-end timing runs files
through the real pipeline (decode + preprocess in the thread pool, then the model). Every variant's
accuracy is measured against the fp32 torch model on the same fixed image set (or the fp32 ONNX Runtime
bundle when torch is absent), so a faster variant's cost in accuracy sits in the same table.
Machines are noisy: compare ratios from one run, not absolute numbers across runs.
"""
from __future__ import annotations

import itertools
import os
import platform
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .backends.probe import importable
from .bundle import Bundle, load_bundle
from .errors import BackendError, BundleError
from .ranking import preference

BENCH_BACKENDS = ("onnxruntime", "torch", "tensorrt")
BENCH_PRECISIONS = ("fp32", "fp16", "int8")
# What `--rank-sizes` needs: the per-pair baseline runs the fp32 torch model from the bundle's checkpoint.
RANK_BASELINE_MODULES = ("torch", "torchvision", "open_clip", "safetensors")


@dataclass
class Variant:
    backend: str
    precision: str
    device: str = "cpu"

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.precision}" + ("" if self.device == "cpu" else f"@{self.device}")


def synthetic_photos(n: int, folder: Path, seed: int = 0, size: tuple[int, int] = (640, 480)) -> list[Path]:
    """Photo-like JPEGs (smooth shading, edges, texture) so decode cost is realistic; deterministic."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    paths = []
    for i in range(n):
        base = np.stack([np.sin(xx / rng.uniform(20, 90) + rng.uniform(0, 6)) *
                         np.cos(yy / rng.uniform(20, 90) + rng.uniform(0, 6)) for _ in range(3)], -1)
        img = 127 + 90 * base + rng.normal(0, 12, size=(h, w, 3))
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(30, 160)
        img[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] *= rng.uniform(0.4, 1.2)
        p = folder / f"bench_{i:05d}.jpg"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(p, quality=90)
        paths.append(p)
    return paths


def variant_bundle(bundle: Bundle, precision: str, workdir: Path) -> Bundle:
    """The bundle to run for a precision: the given one, or an int8/fp16 copy made on the fly."""
    if precision == bundle.precision:
        return bundle
    if bundle.precision != "fp32":
        raise BundleError(f"{bundle.root}: cannot derive {precision} from a {bundle.precision} bundle")
    if precision not in BENCH_PRECISIONS:
        raise BundleError(f"unknown precision '{precision}' ({', '.join(BENCH_PRECISIONS)})")
    if not importable("onnx"):  # onnxruntime's quantizer and fp16 converter both import onnx
        raise BundleError(f"deriving the {precision} bundle needs the export extra: pip install 'fgresq-sdk[export]'")
    out = workdir / f"{bundle.root.name}-{precision}"
    if precision == "int8":
        from .export.quantize import quantize_bundle

        return load_bundle(quantize_bundle(bundle.root, out, force=True))
    if precision == "fp16":
        from .export.half import half_bundle

        return load_bundle(half_bundle(bundle.root, out, force=True))
    raise BundleError(f"unknown precision '{precision}' (fp32, fp16, int8)")


def _percentiles(xs: list[float]) -> dict[str, float]:
    a = np.asarray(xs) * 1000.0
    return {"p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)), "p99": float(np.percentile(a, 99))}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _gpu_peak_mb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    try:
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    except Exception:  # noqa: BLE001 - torch absent: ORT-CUDA keeps its own arena, not visible here
        return None


def time_model(backend, x: np.ndarray, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        backend.encode(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        backend.encode(x)
        times.append(time.perf_counter() - t0)
    return times


def time_end_to_end(scorer, paths: list[Path], repeats: int) -> list[float]:
    """Seconds per full pass over `paths`: decode + preprocess (pipelined) + model."""
    for _ in scorer.iter_encode(paths[: scorer.batch_size]):
        pass
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in scorer.iter_encode(paths):
            pass
        times.append(time.perf_counter() - t0)
    return times


def accuracy_against(reference: tuple[np.ndarray, np.ndarray], scorer, x: np.ndarray) -> dict[str, float]:
    """|Δscore| and pair-decision agreement of a variant against the reference outputs on the same tensors."""
    q_ref, s_ref = reference
    q, s = scorer.backend.encode(x)
    pairs = list(itertools.combinations(range(len(s)), 2))
    i, j = map(list, zip(*pairs))
    p_ref = scorer.head.all_pairs_probs(q_ref)
    p_var = scorer.head.all_pairs_probs(q)
    agree = float(np.mean(p_ref[i, j].argmax(-1) == p_var[i, j].argmax(-1)))
    better_ref = preference(p_ref[i, j]) > 0.5
    better_var = preference(p_var[i, j]) > 0.5
    return {"max_abs_dscore": float(np.max(np.abs(s - s_ref))), "mean_abs_dscore": float(np.mean(np.abs(s - s_ref))),
            "verdict_agreement": agree, "pair_order_agreement": float(np.mean(better_ref == better_var)),
            "pairs": len(pairs)}


def reference_outputs(bundle: Bundle, x: np.ndarray) -> tuple[str, tuple[np.ndarray, np.ndarray]]:
    from .backends import create_backend

    try:
        ref = create_backend("torch", bundle, device="cpu")
        name = "torch-fp32"
    except BackendError:
        ref = create_backend("onnxruntime", bundle, device="cpu")
        name = "onnxruntime-fp32"
    out = [ref.encode(x[k:k + 8]) for k in range(0, len(x), 8)]
    return name, (np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out]))


def run_bench(model: str | Path | None, variants: list[Variant], batch_sizes: list[int], n_images: int = 64,
              repeats: int = 5, warmup: int = 1, accuracy_images: int = 16, rank_sizes: list[int] | None = None,
              log=None) -> dict:
    """Time every variant, measure its accuracy against the reference; with `rank_sizes`, also time `rank`
    against the per-pair baseline on the same images and the same verified bundle."""
    from .bundle import default_bundle_path
    from .preprocess import preprocess
    from .scorer import Scorer

    root = model or default_bundle_path()
    if root is None:
        raise BundleError("no model given and this build has no embedded default model (pass --model DIR)")
    base = load_bundle(root)
    if rank_sizes:  # checked before any timing: a run must not fail at its very end
        check_rank_baseline(base)
    size = int(base.preprocess["size"])
    with tempfile.TemporaryDirectory(prefix="fgresq-bench-") as td:
        work = Path(td)
        paths = synthetic_photos(max(n_images, accuracy_images, max(batch_sizes), *(rank_sizes or [])),
                                 work / "images")
        acc_x = np.stack([preprocess(p, base.preprocess) for p in paths[:accuracy_images]])
        ref_name, ref_out = reference_outputs(base, acc_x)
        rng = np.random.default_rng(0)
        results, skipped = [], []
        for v in variants:
            if log:
                log(f"bench: {v.label}")
            try:
                vb = variant_bundle(base, v.precision, work)
                scorer = Scorer(vb, backend=v.backend, device=v.device, batch_size=max(batch_sizes))
            except (BackendError, BundleError, ImportError) as exc:  # torch on an ONNX-only bundle, an extra
                # that is not installed…: say so, go on with the other variants
                why = str(exc) if not isinstance(exc, ImportError) else \
                    f"a package is missing ({exc}); see the extras: pip install 'fgresq-sdk[export]'"
                skipped.append({"variant": v.label, "reason": why})
                if log:
                    log(f"bench: {v.label} skipped: {why}")
                continue
            rows = []
            for bs in batch_sizes:
                x = rng.normal(size=(bs, 3, size, size)).astype(np.float32)
                t_model = time_model(scorer.backend, x, repeats, warmup)
                scorer.batch_size = bs
                e2e_paths = paths[: max(n_images, bs)]
                t_e2e = time_end_to_end(scorer, e2e_paths, max(1, repeats // 2))
                model_ips = bs / float(np.median(t_model))
                e2e_ips = len(e2e_paths) / float(np.median(t_e2e))
                rows.append({"batch_size": bs, "latency_ms": _percentiles(t_model),
                             "latency_ms_per_image": {k: val / bs for k, val in _percentiles(t_model).items()},
                             "throughput_ips": model_ips, "end_to_end_ips": e2e_ips,
                             "end_to_end_over_model": e2e_ips / model_ips,
                             "peak_rss_mb": _peak_rss_mb(), "gpu_peak_mb": _gpu_peak_mb(v.device)})
            acc = accuracy_against(ref_out, scorer, acc_x)
            results.append({"variant": v.label, "backend": v.backend, "precision": v.precision, "device": v.device,
                            "bundle": vb.name, "rows": rows, "accuracy_vs_reference": acc})
        out = {"model": base.describe(), "reference": ref_name, "machine": machine_info(),
               "n_images": n_images, "repeats": repeats, "results": results, "skipped": skipped}
        if rank_sizes:
            if log:
                log("bench: rank vs the per-pair baseline")
            out["rank_vs_per_pair"] = rank_vs_per_pair(base, paths, rank_sizes)
    return out


def check_rank_baseline(bundle: Bundle) -> None:
    """`--rank-sizes` times the per-pair baseline on the bundle's torch checkpoint: refuse early without one."""
    if not bundle.has("checkpoint"):
        raise BundleError(f"{bundle.name}: --rank-sizes needs a bundle with a torch checkpoint (the per-pair "
                          "baseline runs the torch model); this bundle has none")
    missing = [m for m in RANK_BASELINE_MODULES if not importable(m)]
    if missing:
        raise BackendError(f"--rank-sizes needs the torch extra: pip install 'fgresq-sdk[torch]' "
                           f"(missing: {', '.join(missing)})")


def machine_info() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import onnxruntime as ort

        info["onnxruntime"] = ort.__version__
    except ImportError:
        pass
    return info


def table_rows(result: dict) -> list[list]:
    rows = []
    for r in result["results"]:
        acc = r["accuracy_vs_reference"]
        for row in r["rows"]:
            rows.append([r["variant"], row["batch_size"], row["latency_ms"]["p50"], row["latency_ms"]["p90"],
                         row["latency_ms"]["p99"], row["latency_ms_per_image"]["p50"], row["throughput_ips"],
                         row["end_to_end_ips"], row["end_to_end_over_model"], row["peak_rss_mb"],
                         acc["max_abs_dscore"], acc["pair_order_agreement"]])
    return rows


TABLE_HEADER = ["variant", "batch", "p50 ms", "p90 ms", "p99 ms", "ms/img", "img/s (model)", "img/s (e2e)",
                "e2e/model", "peak RSS MB", "max |Δscore|", "pair agree"]
# The same columns for `-f csv`, named for machines.
CSV_HEADER = ["variant", "batch_size", "latency_ms_p50", "latency_ms_p90", "latency_ms_p99",
              "latency_ms_per_image_p50", "throughput_ips", "end_to_end_ips", "end_to_end_over_model", "peak_rss_mb",
              "max_abs_dscore", "pair_order_agreement"]


# -- rank vs the official per-pair style ------------------------------------------------------------------
def official_style_compare(model, path_a: Path, path_b: Path, pre: dict) -> np.ndarray:
    """The released inference style: decode both images and run each through the fp32 torch model at batch 1
    for every pair, then the comparison head. Used only as the baseline ranking is measured against."""
    import torch

    from .preprocess import preprocess

    with torch.no_grad():
        xa = torch.from_numpy(preprocess(path_a, pre))[None]
        xb = torch.from_numpy(preprocess(path_b, pre))[None]
        qa, _ = model(xa)
        qb, _ = model(xb)
        return torch.softmax(model.compare_logits(qa, qb), dim=1)[0].numpy()


def rank_vs_per_pair(bundle: Bundle, paths: list[Path], sizes: list[int], max_baseline_pairs: int = 64,
                     backend: str = "onnxruntime") -> list[dict]:
    """Seconds to rank N images with `Scorer.rank` vs the per-pair baseline (torch needed for the baseline).

    The baseline's cost is linear in the number of pairs, so beyond `max_baseline_pairs` it is timed on
    that many pairs and scaled to N(N−1)/2 — the row says so.
    """
    from .model import load_checkpoint
    from .scorer import Scorer

    model = load_checkpoint(bundle.path("checkpoint")).eval()
    scorer = Scorer(bundle, backend=backend, batch_size=32)
    scorer.rank(paths[:2])
    rows = []
    for n in sizes:
        subset = paths[:n]
        t0 = time.perf_counter()
        scorer.rank(subset)
        t_rank = time.perf_counter() - t0
        pairs = list(itertools.combinations(range(n), 2))
        timed = pairs[:max_baseline_pairs]
        t0 = time.perf_counter()
        for i, j in timed:
            official_style_compare(model, subset[i], subset[j], bundle.preprocess)
        t_base = (time.perf_counter() - t0) * len(pairs) / len(timed)
        rows.append({"n_images": n, "pairs": len(pairs), "rank_s": t_rank, "per_pair_baseline_s": t_base,
                     "baseline_pairs_timed": len(timed), "extrapolated": len(timed) < len(pairs),
                     "speedup": t_base / t_rank})
    return rows
