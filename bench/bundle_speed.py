"""Two model bundles' CPU speed side by side in one process (e.g. a model and its mirror_views version).

  .venv/bin/python bench/bundle_speed.py BUNDLE_A BUNDLE_B [--rounds 5] [--threads 2]

Model only (the backend's encode of preprocessed tensors) at batch 1 and 8, and `Scorer.score` of 48 decoded
640×480 photos (preprocessing included); rounds alternate between the two bundles and the medians are printed
with their ratio B/A and the CPU, because these machines are shared and noisy: compare ratios, not numbers
across runs.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from fgresq_sdk.cpu import cpu_isa, cpu_model
from fgresq_sdk.scorer import Scorer


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    scorers = {"A": Scorer(args.a, threads=args.threads), "B": Scorer(args.b, threads=args.threads)}
    rng = np.random.default_rng(0)
    size = int(scorers["A"].bundle.preprocess_spec.size)
    x = rng.standard_normal((8, 3, size, size)).astype(np.float32)
    photos = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(48)]
    runs = {(n, k): [] for n in scorers for k in ("batch 1", "batch 8", "score 48")}
    for s in scorers.values():  # warm-up
        s.backend.encode(x)
        s.score(photos[:8])
    for _ in range(args.rounds):
        for n, s in scorers.items():
            t = time.perf_counter()
            for i in range(8):
                s.backend.encode(x[i:i + 1])
            runs[(n, "batch 1")].append(8 / (time.perf_counter() - t))
            t = time.perf_counter()
            for _ in range(3):
                s.backend.encode(x)
            runs[(n, "batch 8")].append(24 / (time.perf_counter() - t))
            t = time.perf_counter()
            s.score(photos)
            runs[(n, "score 48")].append(48 / (time.perf_counter() - t))
    print(f"CPU: {cpu_model()}; ISA: {' '.join(cpu_isa())}; {args.threads} threads; A = {args.a}; B = {args.b}")
    for k in ("batch 1", "batch 8", "score 48"):
        a, b = statistics.median(runs[("A", k)]), statistics.median(runs[("B", k)])
        print(f"{k:9s} A {a:7.1f} img/s  B {b:7.1f} img/s  B/A {b / a:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
