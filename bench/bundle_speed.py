"""Two model bundles' CPU speed side by side in one process (e.g. a model and its mirror_views version).

  .venv/bin/python bench/bundle_speed.py BUNDLE_A BUNDLE_B [--rounds 5] [--threads 2]

Model only (the backend's encode of preprocessed tensors) at batch 1 and 8, and the scorer's pipelined pass
over 48 decoded 640×480 photos (preprocessing included; fgresq_sdk.bench's timers); rounds alternate between
the two bundles and the medians are printed with their ratio B/A and the CPU, because these machines are
shared and noisy: compare ratios, not numbers across runs.
"""
from __future__ import annotations

import argparse
import statistics

import numpy as np

from fgresq_sdk.bench import HEADER_ISA, machine_info, time_end_to_end, time_model
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
        time_model(s.backend, x, repeats=0, warmup=1)
    for _ in range(args.rounds):  # rounds alternate between the bundles: both see the same machine load
        for n, s in scorers.items():
            runs[(n, "batch 1")].append(8 / sum(time_model(s.backend, x[:1], repeats=8, warmup=0)))
            runs[(n, "batch 8")].append(24 / sum(time_model(s.backend, x, repeats=3, warmup=0)))
            runs[(n, "score 48")].append(48 / time_end_to_end(s, photos, repeats=1)[0])
    m = machine_info()
    isa = " ".join(f for f in HEADER_ISA if f in m["isa"])
    print(f"CPU: {m['cpu']}; ISA: {isa}; {args.threads} threads; A = {args.a}; B = {args.b}")
    for k in ("batch 1", "batch 8", "score 48"):
        a, b = statistics.median(runs[("A", k)]), statistics.median(runs[("B", k)])
        print(f"{k:9s} A {a:7.1f} img/s  B {b:7.1f} img/s  B/A {b / a:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
