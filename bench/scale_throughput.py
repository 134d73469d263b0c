"""Throughput of one machine's three ways to score a folder: a local `Scorer`, `fgresq-sdk serve` with
`RemoteScorer` clients (HTTP and gRPC), and `fgresq-sdk batch` with the local and the Ray engine.

    .venv/bin/python bench/scale_throughput.py [--images 192] [--model BUNDLE] [--json out.json]

Images: JPEG 640×480 (quality 90) made from scikit-image's photos, decoded by whoever scores them. The
server runs from the venv that tests/test_serve.py builds (`$FGRESQ_SERVE_VENV`, default
`<dev venv>/serve-env`; PyTriton pins numpy<2), on the same cores as its clients. Local and served rates are
the median of `--repeats` interleaved rounds after a warm-up; `batch` rows are one run each, wall time of the
command. The load average before and after is recorded: on a shared machine, compare within one run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def make_images(root: Path, n: int) -> list[Path]:
    from skimage import data

    names = ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat", "hubble_deep_field", "immunohistochemistry")
    srcs = []
    for name in names:
        a = getattr(data, name)()
        a = np.stack([a] * 3, -1) if a.ndim == 2 else a[..., :3]
        srcs.append(Image.fromarray(np.ascontiguousarray(a)))
    paths = []
    rng = np.random.default_rng(0)
    for i in range(n):
        img = srcs[i % len(srcs)]
        w, h = img.size
        x0, y0 = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        img = img.crop((x0, y0, x0 + 3 * w // 4, y0 + 3 * h // 4)).resize((640, 480), Image.BILINEAR)
        p = root / f"img{i:04d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def tree_cpu_s(pid: int) -> float:
    """user + system CPU seconds of `pid` and every live process below it."""
    from test_serve import descendants

    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from fgresq_sdk.bundle import default_bundle_path
    from fgresq_sdk.client import RemoteScorer
    from fgresq_sdk.scorer import Scorer
    from test_serve import Server, serve_env

    model = Path(args.model) if args.model else default_bundle_path()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    res: dict = {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                 "images": args.images, "image_size": "640x480 JPEG q90", "model": str(model.name),
                 "load_avg_start": os.getloadavg()[0], "rates": {}}
    with tempfile.TemporaryDirectory(prefix="fgresq-scale-bench-") as td:
        td = Path(td)
        (td / "imgs").mkdir()
        paths = make_images(td / "imgs", args.images)

        local = Scorer(model, batch_size=16)
        env = serve_env()
        srv = Server(env, model, td, ("--max-batch-size", "32", "--max-queue-delay-us", "2000"))
        try:
            clients = {"served, HTTP, 16 images per request, 4 in flight": RemoteScorer(srv.url, batch_size=16,
                                                                                       concurrency=4),
                       "served, gRPC, 16 images per request, 4 in flight":
                           RemoteScorer(f"grpc://127.0.0.1:{srv.grpc}", batch_size=16, concurrency=4),
                       "served, gRPC, 1 image per request, 16 in flight (dynamic batching)":
                           RemoteScorer(f"grpc://127.0.0.1:{srv.grpc}", batch_size=1, concurrency=16)}
            variants = {"local Scorer.score (batch 16)": local.score, **{k: c.score for k, c in clients.items()}}
            for fn in variants.values():  # warm-up
                fn(paths[:32])
            # Interleaved rounds: load from other processes drifts; each round times every variant once.
            # CPU time (this process + the server's whole process tree) per image does not depend on how
            # much of the machine other processes take, so it compares the variants on a busy machine.
            times: dict[str, list[float]] = {k: [] for k in variants}
            cpu: dict[str, list[float]] = {k: [] for k in variants}
            for _ in range(args.repeats):
                for k, fn in variants.items():
                    c0 = time.process_time() + tree_cpu_s(srv.proc.pid)
                    t0 = time.perf_counter()
                    fn(paths)
                    times[k].append(time.perf_counter() - t0)
                    cpu[k].append(time.process_time() + tree_cpu_s(srv.proc.pid) - c0)
            for k, ts in times.items():
                res["rates"][k] = len(paths) / float(np.median(ts))
                res.setdefault("cpu_ms_per_image", {})[k] = 1000 * float(np.median(cpu[k])) / len(paths)
            print(res["rates"], flush=True)
            for c in clients.values():
                c.close()
        finally:
            srv.stop(signal.SIGTERM)
            srv.kill()

        exe = Path(sys.executable).parent / "fgresq-sdk"
        for engine, extra in (("local", []), ("ray", ["--object-store-mb", "200"])):
            out = td / f"out-{engine}"
            t0 = time.perf_counter()
            p = subprocess.run([str(exe), "batch", str(td / "imgs"), "--out", str(out), "--model", str(model),
                                "--engine", engine, *extra], capture_output=True, text=True)
            wall = time.perf_counter() - t0
            assert p.returncode == 0, p.stderr
            res["rates"][f"fgresq-sdk batch --engine {engine} (wall, incl. start-up)"] = len(paths) / wall
            res.setdefault("batch_stderr", {})[engine] = p.stderr.strip().splitlines()[-1]
            print(res["rates"], flush=True)
        # Ray's steady state: the pipeline alone (actors starting + scoring), without Ray's own start.
        from fgresq_sdk.batch import BatchOptions, run_batch

        r = run_batch(td / "imgs", td / "out-ray2", BatchOptions(model=str(model), engine="ray",
                                                                 object_store_mb=200))
        res["rates"]["Ray Data pipeline only (actor start + scoring, no Ray start)"] = \
            r.rows / r.details["pipeline_s"]
        res["ray_plan"] = {k: v for k, v in r.details.items() if k != "pipeline_s"}
    res["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
