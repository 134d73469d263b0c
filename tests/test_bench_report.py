"""`fgresq-sdk bench` says where its numbers come from (CPU, ISA, versions, threads) and its table fits 80
columns when piped."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fgresq_sdk.bench import machine_info, report_lines
from fgresq_sdk.bundle import default_bundle_path

EXE = Path(sys.executable).parent / "fgresq-sdk"


def _result(variants=("onnxruntime-fp32", "onnxruntime-int8", "torch-fp32", "onnxruntime-fp16@cuda:1")) -> dict:
    rows = [{"batch_size": bs, "latency_ms": {"p50": 12345.678 / bs, "p90": 23456.7, "p99": 34567.8},
             "throughput_ips": 0.0123456 * bs, "end_to_end_ips": 1234.5678, "peak_rss_mb": 123456.7}
            for bs in (1, 8, 128)]
    return {"model": {"name": "fgresq-vit-b16-with-a-rather-long-name"}, "reference": "torch-fp32",
            "machine": {**machine_info(), "cpu": "Intel(R) Xeon(R) Platinum 8480+ with a very long model name x" * 2},
            "results": [{"variant": v, "rows": rows,
                         "accuracy_vs_reference": {"max_abs_dscore": 1.234e-7, "pair_order_agreement": 0.99666}}
                        for v in variants]}


def test_report_fits_80_columns_with_long_values():
    lines = report_lines(_result())
    assert max(len(ln) for ln in lines) <= 80, "\n".join(ln for ln in lines if len(ln) > 80)
    text = "\n".join(lines)
    assert "onnxruntime-fp16@cuda:1" in text and "99.7%" in text and "1e-07" in text
    assert lines[0].startswith("fgresq-sdk bench — fgresq-vit-b16") and lines[1].startswith("CPU: Intel(R)")
    assert report_lines({**_result(), "results": []}) == []


def test_numbers_are_rounded_to_three_significant_digits():
    from fgresq_sdk.bench import _sig

    assert [_sig(x) for x in (0.0123456, 4.5678, 45.678, 1234.5, 0.0, None)] == \
        ["0.0123", "4.57", "45.7", "1234", "0", "-"]


def test_machine_info_names_cpu_isa_versions_threads():
    import onnxruntime

    from fgresq_sdk.backends.onnxruntime_backend import default_threads
    from fgresq_sdk.cpu import cpu_model, simd_flags

    m = machine_info()
    assert m["cpu"] == cpu_model() and m["isa"] == simd_flags()
    assert m["onnxruntime"] == onnxruntime.__version__
    assert m["threads"]["onnxruntime_intra_op"] == default_threads() and m["threads"]["onnxruntime_inter_op"] == 1
    if os.path.isfile("/proc/cpuinfo") and "avx2" in open("/proc/cpuinfo").read():
        assert "avx2" in m["isa"]


def test_bench_piped_table_and_json_header():
    bundle = default_bundle_path()
    if bundle is None:
        pytest.skip("this build has no embedded default model")
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    args = [str(EXE), "bench", "--model", str(bundle), "--backend", "onnxruntime", "--precision", "fp32",
            "--batch-sizes", "1,2", "--images", "2", "--repeats", "1"]
    res = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert max(len(ln) for ln in lines) <= 80, res.stdout
    assert lines[1].startswith("CPU: ") and lines[2].startswith("ISA: ") and "intra-op" in lines[3]
    assert sum(ln.startswith("onnxruntime-fp32 ") for ln in lines) == 2
    out = json.loads(subprocess.run(args + ["-f", "json"], capture_output=True, text=True, timeout=300,
                                    env=env).stdout)
    assert {"cpu", "isa", "onnxruntime", "torch", "threads"} <= set(out["machine"])
