"""int8 against fp32 on the CPU this process sees: the measurement behind the README's int8 accuracy rows.

ONNX Runtime's int8 numerics depend on the instruction set its kernels dispatch to (u8×s8 dot products
saturate at 16 bits without VNNI), so the same int8 bundle must be judged on each kind of CPU. Where only an
AVX-512 VNNI machine is at hand, the AVX2-only kernels can be reached under user-mode emulation, which
reports a Zen 3 CPUID to the process (accuracy only: emulated timings mean nothing):

    .venv/bin/python bench/int8_accuracy.py --photos data/v2-test/references --int8 /tmp/int8
    qemu-x86_64 -cpu EPYC-Milan .venv/bin/python bench/int8_accuracy.py --photos ... --int8 /tmp/int8

The int8 bundle is built (natively, once) when --int8 names a folder that does not exist yet; quantization
itself does not depend on the CPU. Prints one JSON object: the CPU as this process sees it, then
export/quantize.Int8Validation's numbers (max |Δscore| per batch size; score order kept on the pairs of
versions of one photo that fp32 separates by ≥ 0.005; 3-way verdict agreement).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="fp32 bundle (default: the embedded default model)")
    ap.add_argument("--int8", required=True, help="int8 bundle folder (built from --model if missing)")
    ap.add_argument("--photos", required=True, help="folder of photos (each is also blurred at 4 radii)")
    ap.add_argument("--limit", type=int, default=40, help="at most this many photos (sorted by name)")
    ap.add_argument("--batch-sizes", default="1,8")
    args = ap.parse_args()

    import onnxruntime

    from fgresq_sdk.bundle import default_bundle_path, load_bundle
    from fgresq_sdk.cpu import cpu_isa, cpu_model
    from fgresq_sdk.export.quantize import Int8Validation, quantize_bundle
    from fgresq_sdk.preprocess import is_image_file

    fp32 = load_bundle(args.model or default_bundle_path())
    if not Path(args.int8).exists():
        quantize_bundle(fp32.root, args.int8, validate=False)
    int8 = load_bundle(args.int8)
    photos = sorted(p for p in Path(args.photos).rglob("*") if p.is_file() and is_image_file(p))[: args.limit]
    if not photos:
        print(f"error: --photos {args.photos}: no images", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as td:  # ONNX Runtime gets plain files; bundles are verified on read
        enc32, enc8 = Path(td) / "fp32.onnx", Path(td) / "int8.onnx"
        enc32.write_bytes(fp32.read("encoder"))
        enc8.write_bytes(int8.read("encoder"))
        result = Int8Validation(enc32, fp32.preprocess, fp32.read("heads"), photos,
                                batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")))(enc8)
    out = {"cpu": cpu_model(), "isa_seen_by_this_process": cpu_isa(), "onnxruntime": onnxruntime.__version__,
           "fp32_bundle": fp32.manifest.get("name"), "int8_scheme": int8.manifest.get("quantization", {}).get("weights"),
           "photo_folder": args.photos, **result}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
