"""Batches one core each against one batch on every core (Scorer, CPU), side by side in one process.

    .venv/bin/python bench/one_core.py [--images 400] [--dir FOLDER] [--model BUNDLE] [--rounds 4] [--json out.json]

A Scorer on a CPU runs a call of more than one batch as several batches at once, each decoded and encoded on one
core (`Scorer._iter_one_core`); before, each batch ran on every core while the next was decoded beside it. This
scores the same images both ways with one Scorer (the other path by setting the backend's `one_core_workers` to
0), rounds interleaved after a warm-up, and prints ms/image, the ratio and the largest score difference, with the
CPU's model and SIMD flags beside them: ratios differ between CPUs, so quote them with the CPU. Images: --dir's
PNG/JPEG files (sorted) or JPEG 640x480 made from scikit-image's photos (bench/scale_throughput.py).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--dir", type=Path, default=None)
    ap.add_argument("--model", default=None, help="bundle folder (default: the embedded default model)")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from fgresq_sdk.cpu import cpu_generation, cpu_model, simd_flags
    from fgresq_sdk.preprocess import is_image_file
    from fgresq_sdk.scorer import Scorer

    with tempfile.TemporaryDirectory() as tmp:
        if args.dir is not None:
            paths = sorted(p for p in args.dir.rglob("*") if is_image_file(p))[: args.images]
        else:
            from scale_throughput import make_images
            paths = make_images(Path(tmp), args.images)
        scorer = Scorer(args.model, backend="onnxruntime")
        workers = scorer.backend.one_core_workers
        if not workers:
            print("this backend runs no batches one core each here (one thread, or not a CPU)", file=sys.stderr)
            return 2
        ms = {"one_core": [], "all_cores": []}
        scores = {}
        scorer.score(paths[: 4 * scorer.batch_size])  # warm-up: sessions made, caches filled
        for _ in range(args.rounds):
            for path, w in (("all_cores", 0), ("one_core", workers)):
                scorer.backend.one_core_workers = w
                t0 = time.perf_counter()
                scores[path] = scorer.score(paths)
                ms[path].append((time.perf_counter() - t0) / len(paths) * 1000)
        med = {k: statistics.median(v) for k, v in ms.items()}
        result = {
            "cpu": f"{cpu_model()} ({cpu_generation()})", "simd": simd_flags(), "images": len(paths),
            "model": scorer.bundle.describe().get("name"), "batch_size": scorer.batch_size, "workers": workers,
            "ms_per_image": ms, "median_ms_per_image": med,
            "speedup": med["all_cores"] / med["one_core"],
            "max_abs_score_difference": float(np.abs(scores["one_core"] - scores["all_cores"]).max()),
        }
    print(f"CPU: {result['cpu']}; SIMD: {' '.join(result['simd'])}")
    print(f"{result['images']} images, batch {result['batch_size']}, {workers} workers: one batch on every core "
          f"{med['all_cores']:.1f} ms/image, batches one core each {med['one_core']:.1f} ms/image: "
          f"{result['speedup']:.2f}x (max |Δscore| {result['max_abs_score_difference']:.2g})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
