"""`fgresq-sdk bench` in CI size: it runs every requested variant and reports every documented field."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import needs_torch

EXE = Path(sys.executable).parent / "fgresq-sdk"
ROW_FIELDS = {"batch_size", "latency_ms", "latency_ms_per_image", "throughput_ips", "end_to_end_ips",
              "end_to_end_over_model", "peak_rss_mb"}


@needs_torch
def test_bench_json_fields(tiny_bundle):
    res = subprocess.run([str(EXE), "bench", "--model", str(tiny_bundle), "--backend", "onnxruntime,torch",
                          "--precision", "fp32,int8", "--batch-sizes", "1,2", "--images", "4", "--repeats", "2",
                          "--rank-sizes", "3", "-f", "json"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["reference"] == "torch-fp32" and out["skipped"] == []
    labels = [r["variant"] for r in out["results"]]
    assert labels == ["onnxruntime-fp32", "onnxruntime-int8", "torch-fp32"]
    for r in out["results"]:
        assert [row["batch_size"] for row in r["rows"]] == [1, 2]
        for row in r["rows"]:
            assert ROW_FIELDS <= set(row)
            assert set(row["latency_ms"]) == {"p50", "p90", "p99"}
            assert row["throughput_ips"] > 0 and row["end_to_end_ips"] > 0
        acc = r["accuracy_vs_reference"]
        assert acc["pairs"] > 0 and 0 <= acc["pair_order_agreement"] <= 1
    torch_row = out["results"][2]["accuracy_vs_reference"]
    assert torch_row["max_abs_dscore"] == 0.0  # the reference itself
    assert out["results"][0]["accuracy_vs_reference"]["max_abs_dscore"] <= 1e-4
    (rank_row,) = out["rank_vs_per_pair"]
    assert rank_row["n_images"] == 3 and rank_row["pairs"] == 3 and rank_row["speedup"] > 0


def test_bench_table_output(tiny_bundle):
    res = subprocess.run([str(EXE), "bench", "--model", str(tiny_bundle), "--backend", "onnxruntime",
                          "--precision", "fp32", "--batch-sizes", "1", "--images", "2", "--repeats", "1"],
                         capture_output=True, text=True, timeout=300, env={"COLUMNS": "250", "PATH": "/usr/bin"})
    assert res.returncode == 0, res.stderr
    assert "onnxruntime-fp32" in res.stdout and "accuracy vs" in res.stdout


@needs_torch
def test_pytest_benchmark_suite_runs_ci_sized(tiny_bundle, tmp_path):
    """The benchmarks/ suite (not in the default run) executes and reports every benchmark."""
    import os

    report = tmp_path / "bench.json"
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, FGRESQ_BENCH_MODEL=str(tiny_bundle))
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(root / "benchmarks"),
                          "--benchmark-only", "--benchmark-min-rounds=1", "--benchmark-max-time=0.05",
                          "--benchmark-warmup=off", f"--benchmark-json={report}"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    names = {b["name"] for b in json.loads(report.read_text())["benchmarks"]}
    assert {"test_model_onnxruntime_fp32", "test_model_onnxruntime_int8", "test_model_torch_fp32",
            "test_end_to_end_onnxruntime_fp32", "test_rank[8]", "test_rank[32]",
            "test_rank_official_per_pair_baseline[8]"} <= names
