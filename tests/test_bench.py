"""`fgresq-sdk bench` in CI size: it runs every requested variant and reports every documented field."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import needs_torch

EXE = Path(sys.executable).parent / "fgresq-sdk"
ROW_FIELDS = {"batch_size", "latency_ms", "latency_ms_per_image", "throughput_ips", "end_to_end_ips",
              "end_to_end_over_model", "peak_rss_mb"}


# |Δscore| against the torch fp32 reference. torch-fp32 is the reference model itself, but the reference
# runs in chunks of 8 and the variant in one batch, and GEMM kernels may block differently per batch
# size: measured 0 (AVX-512), 2.9e-11 (AMD Zen 3, AVX2) and 1.6e-10 (batch 1 vs 16), so 1e-6 is ample
# while any real difference in the model would be far above it. ONNX Runtime fp32: measured 8e-8.
TOL_DSCORE = {"torch-fp32": 1e-6, "onnxruntime-fp32": 1e-4}
ACC_FIELDS = {"max_abs_dscore": float, "mean_abs_dscore": float, "verdict_agreement": float,
              "pair_order_agreement": float, "pairs": int}


def _independent_accuracy(bundle_dir, tmp_path):
    """The bench's accuracy block recomputed without its code: the same 16 synthetic photos (its
    documented deterministic generator, seed 0), the torch model called directly, each variant's
    encoder through its backend, and the comparison head from heads.npz by hand."""
    import torch

    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.export.quantize import quantize_bundle
    from fgresq_sdk.model import load_checkpoint
    from fgresq_sdk.photos import synthetic_photos
    from fgresq_sdk.preprocess import preprocess
    from fgresq_sdk.scorer import Scorer

    base = load_bundle(bundle_dir)
    x = np.stack([preprocess(p, base.preprocess) for p in synthetic_photos(16, tmp_path / "img", seed=0)])
    with torch.no_grad():
        q_ref, s_ref = (t.numpy() for t in load_checkpoint(base.path("checkpoint")).eval()(torch.from_numpy(x)))
    with np.load(base.path("heads")) as z:
        w, b = z["compare_weight"].astype(np.float64), z["compare_bias"].astype(np.float64)
    d = w.shape[1] // 2
    i, j = np.triu_indices(len(x), k=1)

    def pair_probs(q):
        logits = q[i].astype(np.float64) @ w[:, :d].T + q[j].astype(np.float64) @ w[:, d:].T + b
        e = np.exp(logits - logits.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p_ref = pair_probs(q_ref)
    out = {}
    for label, bun in (("onnxruntime-fp32", bundle_dir), ("onnxruntime-int8", quantize_bundle(bundle_dir, tmp_path / "i8"))):
        q, s = Scorer(bun, backend="onnxruntime").backend.encode(x)
        p = pair_probs(q)
        out[label] = {"max_abs_dscore": float(np.max(np.abs(s - s_ref))),
                      "mean_abs_dscore": float(np.mean(np.abs(s - s_ref))),
                      "verdict_agreement": float(np.mean(p.argmax(-1) == p_ref.argmax(-1))),
                      "pair_order_agreement": float(np.mean((p[:, 0] + p[:, 2] / 2 > 0.5)
                                                            == (p_ref[:, 0] + p_ref[:, 2] / 2 > 0.5))),
                      "pairs": len(i)}
    return out


@needs_torch
def test_bench_json_fields(tiny_bundle, tmp_path):
    res = subprocess.run([str(EXE), "bench", "--model", str(tiny_bundle), "--backend", "onnxruntime,torch",
                          "--precision", "fp32,int8", "--batch-sizes", "1,2", "--images", "4", "--repeats", "2",
                          "--rank-sizes", "3", "-f", "json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["reference"] == "torch-fp32" and out["skipped"] == []
    assert out["model"]["path"] == str(tiny_bundle) and out["model"]["precision"] == "fp32"
    assert (out["n_images"], out["repeats"]) == (4, 2)
    assert {"platform", "python", "cpus"} <= set(out["machine"])
    labels = [r["variant"] for r in out["results"]]
    assert labels == ["onnxruntime-fp32", "onnxruntime-int8", "torch-fp32"]
    for r in out["results"]:
        assert [row["batch_size"] for row in r["rows"]] == [1, 2]
        for row in r["rows"]:
            assert ROW_FIELDS <= set(row)
            assert set(row["latency_ms"]) == set(row["latency_ms_per_image"]) == {"p50", "p90", "p99"}
            lat = row["latency_ms"]
            assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
            assert row["latency_ms_per_image"]["p50"] == pytest.approx(lat["p50"] / row["batch_size"])
            assert row["throughput_ips"] > 0 and row["end_to_end_ips"] > 0 and row["peak_rss_mb"] > 0
            assert row["end_to_end_over_model"] == pytest.approx(row["end_to_end_ips"] / row["throughput_ips"])
        acc = r["accuracy_vs_reference"]
        assert {k: type(v) for k, v in acc.items()} == ACC_FIELDS, acc
        assert acc["pairs"] == 16 * 15 // 2  # 16 accuracy images by default, all unordered pairs
        assert 0 <= acc["mean_abs_dscore"] <= acc["max_abs_dscore"]
        assert 0 <= acc["pair_order_agreement"] <= 1 and 0 <= acc["verdict_agreement"] <= 1
    by = {r["variant"]: r["accuracy_vs_reference"] for r in out["results"]}
    for label, tol in TOL_DSCORE.items():
        assert by[label]["max_abs_dscore"] <= tol, (label, by[label])
        assert by[label]["pair_order_agreement"] >= 0.99 and by[label]["verdict_agreement"] >= 0.99, by[label]
    # The reported numbers are what they claim to be: recomputed here independently. int8 matters most:
    # its error is real (and differs between CPUs), so a wrong reference or wrong inputs would show.
    want = _independent_accuracy(tiny_bundle, tmp_path)
    for label, exp in want.items():
        got = by[label]
        for k in ("max_abs_dscore", "mean_abs_dscore"):
            assert got[k] == pytest.approx(exp[k], rel=1e-3, abs=1e-7), (label, k, got, exp)
        for k in ("verdict_agreement", "pair_order_agreement"):
            assert abs(got[k] - exp[k]) <= 1.5 / exp["pairs"], (label, k, got, exp)  # one near-tie may flip
        assert got["pairs"] == exp["pairs"]
    (rank_row,) = out["rank_vs_per_pair"]
    assert rank_row["n_images"] == 3 and rank_row["pairs"] == 3 and rank_row["baseline_pairs_timed"] == 3
    assert rank_row["extrapolated"] is False and rank_row["rank_s"] > 0 and rank_row["per_pair_baseline_s"] > 0
    assert rank_row["speedup"] == pytest.approx(rank_row["per_pair_baseline_s"] / rank_row["rank_s"])


def test_bench_table_output(tiny_bundle):
    res = subprocess.run([str(EXE), "bench", "--model", str(tiny_bundle), "--backend", "onnxruntime",
                          "--precision", "fp32", "--batch-sizes", "1", "--images", "2", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, env={"COLUMNS": "250", "PATH": "/usr/bin"})
    assert res.returncode == 0, res.stderr
    assert "onnxruntime-fp32" in res.stdout and "accuracy vs" in res.stdout


@needs_torch
def test_pytest_benchmark_suite_runs_ci_sized(tiny_bundle, tmp_path):
    """The bench/ pytest-benchmark suites (not in the default run) execute and report every benchmark."""
    import os

    report = tmp_path / "bench.json"
    root = Path(__file__).resolve().parents[1]
    # a fresh session, not one of this run's xdist workers: pytest-benchmark disables itself where
    # PYTEST_XDIST_WORKER is set
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    env["FGRESQ_BENCH_MODEL"] = str(tiny_bundle)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "bench"),
                          "--benchmark-only", "--benchmark-min-rounds=1", "--benchmark-max-time=0.05",
                          "--benchmark-warmup=off", f"--benchmark-json={report}"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    names = {b["name"] for b in json.loads(report.read_text())["benchmarks"]}
    assert {"test_model_onnxruntime_fp32", "test_model_onnxruntime_int8", "test_model_torch_fp32",
            "test_end_to_end_onnxruntime_fp32", "test_rank[8]", "test_rank[32]",
            "test_rank_official_per_pair_baseline[8]"} <= names


@needs_torch
def test_isa_fingerprint_is_deterministic_and_the_pins_reach_the_child():
    """bench/isa_repro.py: the same hash twice on one machine (otherwise comparing machines means nothing), the
    weights actually trained (another step count, another hash), and each pin set reaches the re-executed process."""
    script = Path(__file__).resolve().parents[1] / "bench" / "isa_repro.py"

    def run(*args):
        res = subprocess.run([sys.executable, str(script), "--size", "64", *args], capture_output=True, text=True,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        return json.loads(res.stdout.strip().splitlines()[-1])

    a, b, c = run("--steps", "2"), run("--steps", "2"), run("--steps", "3")
    assert a["sha256"] == b["sha256"] != c["sha256"] and a["pins"] == {}
    pinned = run("--steps", "2", "--pin-avx2")
    assert pinned["pins"] == {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
    assert pinned["isa"] and pinned["cpu"] and pinned["threads"] == 2
    portable = run("--steps", "2", "--pins", "portable")
    assert portable["pins"] == {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE"}
    assert portable["aten_capability"] == "DEFAULT" and portable["onednn"] is True
    from fgresq_sdk.train.kernels import PORTABLE_ENV

    cnr = run("--steps", "2", "--pins", "cnr")  # what a training config's "cpu_kernels": "portable" runs on
    assert cnr["pins"] == PORTABLE_ENV and cnr["onednn"] is False


def test_isa_repro_per_module_repeats_itself_and_compare_names_the_first_entry_that_parts(tmp_path):
    """bench/isa_repro.py --per-module / --compare: one step's hashes per module output, gradient and weight are the
    same twice on one machine (else comparing machines means nothing), and --compare names the first entry of each
    section whose hash differs (planted here: a module output halfway through the forward pass, the last gradient)."""
    script = Path(__file__).resolve().parents[1] / "bench" / "isa_repro.py"

    def run(*args):
        return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, timeout=300)

    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    for out in (a, b):
        res = run("--size", "32", "--batch", "2", "--per-module", str(out))
        assert res.returncode == 0, res.stderr[-2000:]
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    for section in ("forward", "grads", "weights"):
        assert ra[section] == rb[section] and len(ra[section]) > 10
    assert ra["forward"][-1][0] == "loss" and ra["cpu"] and ra["threads"] == 2
    assert len(ra["grads"]) <= len(ra["weights"]) and ra["grads"] != ra["weights"]  # unused ones have no grad
    same = run("--compare", str(a), str(b))
    assert same.returncode == 0
    n_fwd, n_grad, n_w = len(ra["forward"]), len(ra["grads"]), len(ra["weights"])
    assert f"forward: 0 of {n_fwd} differ" in same.stdout and f"weights: 0 of {n_w} differ" in same.stdout
    k = n_fwd // 2
    ra["forward"][k][1] = "0" * 16
    ra["grads"][-1][1] = "0" * 16
    c.write_text(json.dumps(ra))
    parted = run("--compare", str(b), str(c)).stdout
    assert f"forward: 1 of {n_fwd} differ, the first: {ra['forward'][k][0]}" in parted
    assert f"grads: 1 of {n_grad} differ, the first: {ra['grads'][-1][0]}" in parted
    assert f"weights: 0 of {n_w} differ" in parted
    missing = run("--compare", str(a), str(tmp_path / "nothing.json"))
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    nowhere = run("--size", "32", "--batch", "2", "--per-module", str(tmp_path / "no-folder" / "x.json"))
    assert nowhere.returncode == 2 and nowhere.stderr.strip().startswith("isa_repro: --per-module: ")
    assert len(nowhere.stderr.strip().splitlines()) == 1


def test_isa_repro_emulate_runs_under_qemu_as_the_named_cpu_or_says_what_is_missing(tmp_path):
    """bench/isa_repro.py --emulate: the fingerprint of another CPU model (qemu-user), with the pins in the
    environment of the emulated process (an execve there would leave the emulator) and the model recorded;
    without qemu, one line naming the package."""
    import os
    import shutil

    script = Path(__file__).resolve().parents[1] / "bench" / "isa_repro.py"
    env = {**os.environ, "PATH": str(tmp_path)}  # no qemu on this PATH
    res = subprocess.run([sys.executable, str(script), "--emulate=EPYC-Milan"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 2 and res.stderr.strip() == ("isa_repro: --emulate needs qemu-user "
                                                          "(apt-get install qemu-user-static)")
    if not (shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")):
        pytest.skip("qemu-user is not installed (apt-get install qemu-user-static)")
    res = subprocess.run([sys.executable, str(script), "--size", "32", "--batch", "2", "--steps", "1",
                          "--pins", "avx2-cnr", "--emulate", "EPYC-Milan"], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["emulated_cpu"] == "EPYC-Milan" and got["aten_capability"] == "AVX2"
    assert got["pins"]["MKL_CBWR"] == "COMPATIBLE,STRICT" and "TCG doesn't support" not in res.stderr


def test_one_core_bench_reports_both_paths_with_the_cpu(tiny_bundle, tmp_path):
    """bench/one_core.py: both ways of scoring a folder timed in one process, the same scores, the CPU named."""
    import os

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one usable core: nothing runs side by side")
    script = Path(__file__).resolve().parents[1] / "bench" / "one_core.py"
    out = tmp_path / "one_core.json"
    res = subprocess.run([sys.executable, str(script), "--images", "12", "--rounds", "1", "--model", str(tiny_bundle),
                          "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["images"] == 12 and r["workers"] >= 2 and r["cpu"] and r["simd"] is not None
    assert len(r["ms_per_image"]["one_core"]) == len(r["ms_per_image"]["all_cores"]) == 1
    assert r["speedup"] > 0 and r["max_abs_score_difference"] < 1e-5
    assert "CPU: " in res.stdout and "x (max |Δscore|" in res.stdout
