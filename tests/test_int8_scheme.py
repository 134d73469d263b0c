"""int8 bundles say what they are: the scheme, where they were validated and how close they stay to fp32
(quantization.validation in model.json), and the runtime warns once when a scheme is unsafe on this CPU."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fgresq_sdk import cpu
from fgresq_sdk.backends.onnxruntime_backend import int8_scheme_risk
from fgresq_sdk.bundle import default_bundle_path, load_bundle
from fgresq_sdk.export import quantize

from conftest import TRAINED_VIT

EXE = Path(sys.executable).parent / "fgresq-sdk"
OLD_SCHEME = {"method": "onnxruntime dynamic", "ops": ["MatMul", "Gemm"], "weights": "int8 per-channel"}
NEW_SCHEME = {"method": "onnxruntime dynamic", "weights": "int8 per-channel, reduce_range (7-bit)",
              "scheme": {"kind": "dynamic", "weights": "int8", "weight_bits": 7}}
ZEN3 = ("AMD Ryzen 9 5950X 16-Core Processor", frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"}))
VNNI = ("AMD EPYC", frozenset({"avx2", "fma", "avx512f", "avx512_vnni"}))


@pytest.fixture()
def on_cpu(monkeypatch):
    def use(info, machine="x86_64"):
        monkeypatch.setattr(cpu, "_cpuinfo", lambda: info)
        monkeypatch.setattr(cpu.platform, "machine", lambda: machine)
    return use


@pytest.mark.parametrize("quant,info,machine,unsafe", [
    (OLD_SCHEME, ZEN3, "x86_64", True),         # full-range U8S8 without VNNI: saturates
    (OLD_SCHEME, VNNI, "x86_64", False),        # VNNI: no 16-bit saturation
    (OLD_SCHEME, ZEN3, "aarch64", False),       # other kernels on ARM
    (NEW_SCHEME, ZEN3, "x86_64", False),        # 7-bit weights do not saturate
    ({**NEW_SCHEME, "scheme": {"weights": "int8", "weight_bits": 8}}, ZEN3, "x86_64", True),
    ({"weights": "uint8 per-channel"}, ZEN3, "x86_64", False),
])
def test_int8_scheme_risk(on_cpu, quant, info, machine, unsafe):
    on_cpu(info, machine)
    why = int8_scheme_risk({"precision": "int8", "quantization": quant})
    assert (why is not None) == unsafe, why
    if unsafe:
        assert "\n" not in why and "VNNI" in why and info[0] in why and "export --format onnx-int8" in why
    assert int8_scheme_risk({"precision": "fp32", "quantization": quant}) is None


@pytest.fixture(scope="module")
def int8_bundle(tmp_path_factory):
    from fgresq_sdk.export.quantize import quantize_bundle

    photos = tmp_path_factory.mktemp("photos")
    from conftest import photo

    from PIL import Image

    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(photo(name)).save(photos / f"{name}.png")
    (photos / "notes.txt").write_text("not an image")
    out = quantize_bundle(TRAINED_VIT, tmp_path_factory.mktemp("int8") / "b", calibration=photos)
    return out, photos


def test_int8_manifest_records_scheme_photos_cpu_and_accuracy(int8_bundle):
    out, photos = int8_bundle
    q = load_bundle(out).manifest["quantization"]
    assert q["scheme"] == {"kind": "dynamic", "activations": "uint8, per batch", "weights": "int8",
                           "weight_bits": 7, "per_channel": True}
    assert q["calibration"]["source"].startswith(f"{photos.name}/ (3 of 3 photos")
    v = q["validation"]
    assert v["cpu"] == cpu.cpu_model() and v["isa"] == cpu.cpu_isa()
    # the fp32 rung kept is the first that met the bound, or the last one tried (and then it says so)
    worst = max(r["max_abs_dscore"] for r in v["by_batch_size"].values())
    assert v["max_abs_dscore_bound"] == 0.01 and v["meets_bound"] == (worst <= 0.01)
    import onnx

    graph = onnx.load(str(TRAINED_VIT / "encoder.onnx"), load_external_data=False)
    rungs = [name for name, _ in quantize.fp32_rungs(graph)]
    assert q["fp32_rung"] in rungs and (v["meets_bound"] or q["fp32_rung"] == rungs[-1])
    # every rung up to the one kept was measured, in the ladder's order
    assert [t["rung"] for t in v["rungs_tried"]] == rungs[:rungs.index(q["fp32_rung"]) + 1]
    assert v["rungs_tried"][-1]["max_abs_dscore"] == worst
    assert (v["photos"], v["images"], v["pairs"]) == (3, 15, 3 * 5 * 4)
    assert set(v["by_batch_size"]) == {"1", "8"}
    for res in v["by_batch_size"].values():
        # tests/test_int8.py's tolerance for this scheme (measured 0.0028–0.0094 on AVX-512 VNNI)
        assert 0 < res["max_abs_dscore"] <= 0.03 and res["mean_abs_dscore"] <= res["max_abs_dscore"]
        assert res["verdict_agreement"] >= 0.95
        assert res["pair_order_agreement"] is None or res["pair_order_agreement"] >= 0.9


def test_unsafe_bundle_warns_once_in_one_line(int8_bundle, tmp_path):
    old = tmp_path / "old-int8"
    shutil.copytree(int8_bundle[0], old)
    m = json.loads((old / "model.json").read_text())
    m["quantization"] = OLD_SCHEME
    (old / "model.json").write_text(json.dumps(m))
    code = (
        "import fgresq_sdk.cpu as c, sys\n"
        f"c._cpuinfo = lambda: ({ZEN3[0]!r}, frozenset({sorted(ZEN3[1])!r}))\n"
        "from fgresq_sdk.scorer import Scorer\n"
        f"a = Scorer({str(old)!r}); b = Scorer({str(old)!r})\n"
        f"Scorer({str(int8_bundle[0])!r})\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"warning: {old}: ") and "VNNI" in lines[0], res.stderr


def test_calibration_folder_errors_are_one_line(tmp_path):
    bundle = default_bundle_path()
    if bundle is None:
        pytest.skip("this build has no embedded default model")
    empty = tmp_path / "empty"
    empty.mkdir()
    for extra, want in ((["--format", "onnx-int8", "--calibration", str(empty)], "no image files"),
                        (["--format", "onnx-int8", "--calibration", str(tmp_path / "missing")], "not a folder"),
                        (["--calibration", str(empty)], "--calibration applies to --format onnx-int8 only")):
        res = subprocess.run([str(EXE), "export", "-c", str(bundle), "-o", str(tmp_path / "out")] + extra,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and want in res.stderr, res.stderr
        assert len([ln for ln in res.stderr.splitlines() if ln.strip()]) == 1, res.stderr
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_flags_hidden_from_this_process_by_cpuid_do_not_count(monkeypatch):
    """/proc/cpuinfo lists the host's flags; under an emulator or a masking hypervisor CPUID (what ONNX Runtime
    dispatches on) reports fewer. A flag numpy's CPUID probe says is absent must not count."""
    import io

    from fgresq_sdk import cpu

    text = "model name\t: AMD EPYC 9R14\nflags\t\t: fpu sse4_1 avx avx2 fma avx512f avx512bw avx512_vnni\n"
    monkeypatch.setattr("builtins.open", lambda *a, **k: io.StringIO(text))
    monkeypatch.setattr(cpu, "is_x86", lambda: True)
    cpu._cpuinfo.cache_clear()
    try:
        monkeypatch.setattr(cpu, "_cpuid_hidden", lambda: {"avx512f", "avx512bw", "avx512_vnni"})
        assert cpu.cpu_isa() == ["avx2"] and not cpu.has_vnni()
        cpu._cpuinfo.cache_clear()
        monkeypatch.setattr(cpu, "_cpuid_hidden", lambda: set())
        assert cpu.cpu_isa() == ["avx2", "avx512_vnni", "avx512f"] and cpu.has_vnni()
    finally:
        monkeypatch.undo()
        cpu._cpuinfo.cache_clear()



def test_a_bundle_that_misses_the_bound_escalates_and_says_so(monkeypatch, tmp_path):
    """With a bound no int8 model can meet, both fp32 rungs are tried; the last one is kept, model.json says
    the bound was missed and the export's log line is a one-line warning."""
    import onnx

    monkeypatch.setattr(quantize, "MAX_SCORE_DELTA", 0.0)
    lines = []
    out = quantize.quantize_bundle(TRAINED_VIT, tmp_path / "b", log=lines.append)
    q = load_bundle(out).manifest["quantization"]
    assert q["fp32_rung"] == "attention-in" and q["validation"]["meets_bound"] is False
    assert len(lines) == 1 and lines[0].startswith("warning: int8 vs fp32 on synthetic photos") and "\n" not in lines[0]
    # what stayed fp32: the heads, the act×act MatMuls and every tower's attention in-projection
    graph = onnx.load(str(out / "encoder.int8.onnx"))
    fp32_in_proj = {n.name for n in graph.graph.node if n.op_type == "MatMul" and n.name.endswith("/attn/MatMul")}
    layers = load_bundle(out).config["vision_cfg"]["layers"]
    assert len(fp32_in_proj) == 2 * layers  # not replaced by MatMulInteger: both towers, every block


def test_the_ladder_of_a_deep_tower_keeps_leading_blocks_fp32_first():
    """A 12-block image tower (the paper's ViT-B/16): the image tower's first 1, 2, 4, 8 blocks, then all 12,
    then both towers; each rung keeps exactly those in-projections (q/k/v apart, or one packed MatMul) fp32."""
    from onnx import TensorProto, helper

    nodes, inits = [], []
    for tower, packed in (("image_tower", False), ("degradation_tower", True)):
        for b in range(12):
            for proj in (["attn/MatMul"] if packed else ["attn/q/MatMul", "attn/k/MatMul", "attn/v/MatMul"]):
                w = f"{tower}.{b}.{proj}.w"
                inits.append(helper.make_tensor(w, TensorProto.FLOAT, [1, 1], [1.0]))
                nodes.append(helper.make_node("MatMul", ["x", w], [w + ".out"],
                                              name=f"/{tower}/transformer/resblocks.{b}/{proj}"))
            nodes.append(helper.make_node("MatMul", ["x", "x"], [f"{tower}.{b}.qk"],
                                          name=f"/{tower}/transformer/resblocks.{b}/attn/MatMul_1"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info(n.output[0], TensorProto.FLOAT, [1, 1]) for n in nodes],
                              initializer=inits)
    model = helper.make_model(graph)
    rungs = quantize.fp32_rungs(model)
    assert [name for name, _ in rungs] == ["none", "image-attention-in:1", "image-attention-in:2",
                                           "image-attention-in:4", "image-attention-in:8", "image-attention-in",
                                           "attention-in"]
    sizes = [len(in_proj) for _, in_proj in rungs]
    assert sizes == [0, 3, 6, 12, 24, 36, 48]
    four = rungs[3][1]
    assert all(n.startswith("/image_tower/") and int(n.split("resblocks.")[1].split("/")[0]) < 4 for n in four)
    keep = set(quantize._nodes_to_keep_fp32(model, four))
    # the act×act products stay fp32 in every rung; the kept in-projections are exactly the rung's
    assert {n.name for n in nodes if n.name.endswith("MatMul_1")} | four == keep


def test_a_graph_without_attention_blocks_has_one_rung():
    """CNN towers have no in-projections: every rung would be the same graph, so only `none` is tried."""
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [1, 1], [1.0])
    node = helper.make_node("MatMul", ["x", "w"], ["y"], name="/image_tower/layer1/conv/MatMul")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])], initializer=[w])
    assert quantize.fp32_rungs(helper.make_model(graph)) == [("none", frozenset())]


def test_export_help_names_the_number_of_validation_photos():
    import typer

    from fgresq_sdk.cli import app

    export = typer.main.get_command(app).commands["export"]
    help_text = next(p.help for p in export.params if p.name == "calibration")
    assert f"the first {quantize.VALIDATION_PHOTOS} by name" in help_text
