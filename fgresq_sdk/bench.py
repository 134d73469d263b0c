"""`fgresq-sdk bench`: speed and accuracy of each backend/precision variant, side by side in one run.

Model-only timing feeds pre-normalised tensors straight to the backend; end-to-end timing runs files
through the real pipeline (decode + preprocess in the thread pool, then the model). Every variant's
accuracy is measured against the fp32 torch model on the same fixed image set (or the fp32 ONNX Runtime
bundle when torch is absent), so a faster variant's cost in accuracy sits in the same table.
Machines are noisy: compare ratios from one run, not absolute numbers across runs.

Which variants exist, how the bundle for each is obtained (the given one, or derived on the fly) and which
model is the reference all come from the formats table (fgresq_sdk/formats.py).
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

from .backends.probe import importable
from .bundle import Bundle, load_bundle
from .errors import BackendError, BundleError
from .formats import BENCH_DERIVED, FP32, REFERENCES, Format, bench_format, by_backend
from .photos import synthetic_photos
from .ranking import preference


@dataclass
class Variant:
    backend: str
    precision: str
    device: str = "cpu"

    @property
    def label(self) -> str:
        return f"{self.backend}-{self.precision}" + ("" if self.device == "cpu" else f"@{self.device}")

    @property
    def format(self) -> Format | None:
        return bench_format(self.backend, self.precision)


def variants(backends: list[str], precisions: list[str], device: str) -> list[Variant]:
    """Every backend × precision that a format offers on this kind of device, backends first. Pairs no format
    offers (torch int8) and precisions its backend runs only on a GPU (torch fp16 on the CPU) are left out."""
    out = []
    for b in backends:
        for p in precisions:
            fmt = bench_format(b, p)
            if fmt is not None and fmt.runs_on(p, device):
                out.append(Variant(b, p, device))
    return out


def variant_bundle(bundle: Bundle, fmt: Format, workdir: Path) -> Bundle:
    """The bundle to run for a format: the given one, or a copy derived on the fly with the format's builder
    (from an fp32 bundle)."""
    if fmt.precision == bundle.precision:
        return bundle
    if fmt.bench != BENCH_DERIVED or bundle.precision != FP32:
        raise BundleError(f"{bundle.root}: cannot derive {fmt.precision} from a {bundle.precision} bundle")
    if not all(importable(m) for m in fmt.modules):  # onnxruntime's quantizer and fp16 converter import onnx
        raise BundleError(f"deriving the {fmt.precision} bundle needs the {fmt.extra} extra: "
                          f"pip install 'fgresq-sdk[{fmt.extra}]'")
    out = workdir / f"{bundle.root.name}-{fmt.precision}"
    # bench_options: e.g. no int8 validation at build time, bench measures its own accuracy
    return load_bundle(fmt.load_builder()(bundle.root, out, force=True, **fmt.bench_options))


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
    """(label, outputs) of the first reference format (formats.REFERENCES) that runs the bundle on the CPU."""
    from .backends import create_backend

    *fallbacks, last = REFERENCES
    for fmt in fallbacks:
        try:
            ref = create_backend(fmt.backend, bundle, device="cpu")
            break
        except BackendError:  # torch not installed, no checkpoint…: the next reference
            continue
    else:
        fmt, ref = last, create_backend(last.backend, bundle, device="cpu")
    out = [ref.encode(x[k:k + 8]) for k in range(0, len(x), 8)]
    return Variant(fmt.backend, fmt.precision).label, (np.concatenate([o[0] for o in out]),
                                                       np.concatenate([o[1] for o in out]))


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
                fmt = v.format
                if fmt is None:
                    raise BundleError(f"no format runs {v.precision} on {v.backend}")
                vb = variant_bundle(base, fmt, work)
                # A precision the backend runs the bundle at (torch fp16, a TensorRT engine's), not the bundle's own.
                scorer = Scorer(vb, backend=v.backend, device=v.device, batch_size=max(batch_sizes),
                                precision=v.precision if fmt.run_precisions else None)
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
    torch = by_backend("torch")
    missing = [m for m in torch.modules if not importable(m)]
    if missing:
        raise BackendError(f"--rank-sizes needs the {torch.extra} extra: pip install 'fgresq-sdk[{torch.extra}]' "
                           f"(missing: {', '.join(missing)})")


def _version(pkg: str) -> str | None:
    """An installed package's version without importing it (torch takes seconds to import)."""
    from importlib import metadata

    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """Where the numbers come from: CPU model and SIMD flags, library versions, thread counts."""
    import sys

    from .backends.onnxruntime_backend import default_threads
    from .cpu import cpu_model, simd_flags

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu": cpu_model(), "machine": platform.machine(), "isa": simd_flags(),
            "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"), "torch": _version("torch"),
            "threads": {"onnxruntime_intra_op": default_threads(), "onnxruntime_inter_op": 1}}
    if "torch" in sys.modules:  # only if a torch variant (or the torch reference) ran: its thread pool
        info["threads"]["torch_intra_op"] = sys.modules["torch"].get_num_threads()
        info["threads"]["torch_inter_op"] = sys.modules["torch"].get_num_interop_threads()
    return info


# Flags shown in the text header (the JSON has every SIMD flag): what a reader compares machines by.
HEADER_ISA = ("sse4_2", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
              "amx_tile", "asimd", "asimddp", "i8mm", "sve")


def header_lines(result: dict, width: int = 80) -> list[str]:
    """The text header: model and reference, CPU and ISA, library versions and thread counts."""
    m = result["machine"]
    isa = " ".join(f for f in HEADER_ISA if f in m.get("isa", [])) or "-"
    cpus = f"{m.get('usable_cpus') or '?'} of {m.get('cpus') or '?'} CPUs usable"
    th = m.get("threads", {})
    ort = (f"onnxruntime {m.get('onnxruntime') or '-'}: {th.get('onnxruntime_intra_op', '?')} intra-op + "
           f"{th.get('onnxruntime_inter_op', '?')} inter-op threads")
    torch = "torch " + (m.get("torch") or "not installed")
    if "torch_intra_op" in th:
        torch += f": {th['torch_intra_op']} threads"
    lines = [f"fgresq-sdk bench — {result['model']['name']} (accuracy vs {result['reference']})",
             f"CPU: {m.get('cpu', '?')} ({m.get('machine', '?')}, {cpus})", f"ISA: {isa}",
             f"{ort}; {torch}", f"Python {m.get('python', '?')}, {m.get('platform', '?')}"]
    return [ln if len(ln) <= width else ln[: width - 1] + "…" for ln in lines]


def _sig(x: float | None, digits: int = 3) -> str:
    """`digits` significant digits without exponent for the magnitudes a bench shows (0.0123, 4.56, 1234)."""
    if x is None or not np.isfinite(x):
        return "-"
    if x == 0:
        return "0"
    decimals = max(0, digits - 1 - int(np.floor(np.log10(abs(x)))))
    return f"{x:.{decimals}f}"


def _delta(x: float | None) -> str:
    if x is None or not np.isfinite(x):
        return "-"
    return "0" if x == 0 else (f"{x:.4f}" if x >= 1e-4 else f"{x:.0e}")


# (header, right-aligned, value from (variant result, row)); the optional ones go first when space is short.
_COLUMNS = [
    ("variant", False, lambda r, row: r["variant"]),
    ("batch", True, lambda r, row: str(row["batch_size"])),
    ("p50 ms", True, lambda r, row: _sig(row["latency_ms"]["p50"])),
    ("p90 ms", True, lambda r, row: _sig(row["latency_ms"]["p90"])),
    ("img/s", True, lambda r, row: _sig(row["throughput_ips"])),
    ("e2e img/s", True, lambda r, row: _sig(row["end_to_end_ips"])),
    ("RSS MB", True, lambda r, row: f"{row['peak_rss_mb']:.0f}"),
    ("max|Δs|", True, lambda r, row: _delta(r["accuracy_vs_reference"]["max_abs_dscore"])),
    ("agree", True, lambda r, row: f"{100 * r['accuracy_vs_reference']['pair_order_agreement']:.1f}%"),
]
_OPTIONAL = ("p90 ms", "RSS MB", "e2e img/s")  # dropped in this order if the table would be wider than 80


def table_lines(result: dict, width: int = 80) -> list[str]:
    """The results as a plain-text table no wider than `width` (for pipes and narrow terminals)."""
    cells = [[(h, right, fn(r, row)) for h, right, fn in _COLUMNS] for r in result["results"] for row in r["rows"]]
    if not cells:
        return []
    drop: set[str] = set()

    def render() -> list[str]:
        cols = [i for i, (h, _, _) in enumerate(_COLUMNS) if h not in drop]
        widths = {i: max(len(_COLUMNS[i][0]), *(len(c[i][2]) for c in cells)) for i in cols}

        def line(values: list[tuple[str, bool]]) -> str:
            return "  ".join(v.rjust(widths[i]) if right else v.ljust(widths[i])
                             for i, (v, right) in zip(cols, values)).rstrip()

        out = [line([(_COLUMNS[i][0], _COLUMNS[i][1]) for i in cols])]
        out.append("  ".join("-" * widths[i] for i in cols))
        out += [line([(c[i][2], c[i][1]) for i in cols]) for c in cells]
        return out

    lines = render()
    for name in _OPTIONAL:
        if max(map(len, lines)) <= width:
            break
        drop.add(name)
        lines = render()
    return lines


def report_lines(result: dict, width: int = 80) -> list[str]:
    """Header, a blank line, the table, and a note on the columns (nothing when no variant ran)."""
    table = table_lines(result, width)
    if not table:
        return []
    notes = ["img/s: model only; e2e: JPEG decode + preprocess + model (pipelined)",
             f"max|Δs|, agree (pair order): against {result['reference']}"]
    return header_lines(result, width) + [""] + table + [""] + [n[:width] for n in notes]


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
