"""The CPU numbers quoted in the README, measured side by side in one run.

  .venv/bin/python bench/cpu_numbers.py --paper-bundle B16_DIR --default-bundle DIR --hr-manifest M --out F.json

1. paper config (ViT-B/16): ONNX Runtime fp32 vs torch eager fp32, int8 vs fp32, end-to-end vs model-only;
2. the default model: `rank` (N encoder passes + numpy head) vs the per-pair baseline at N = 8, 32, 128;
3. multi-crop: pair ACC on a high-resolution held-out manifest with the whole image squashed (crops=1)
   vs K aligned native-resolution crops.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--paper-bundle", type=Path, required=True)
    ap.add_argument("--default-bundle", type=Path, required=True)
    ap.add_argument("--hr-manifest", type=Path, required=True)
    ap.add_argument("--crops", type=int, default=4)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from fgresq_sdk.bench import Variant, rank_vs_per_pair, run_bench
    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.photos import synthetic_photos
    from fgresq_sdk.scorer import Scorer
    from fgresq_sdk.train.evaluate import evaluate

    out: dict = {}
    t0 = time.time()
    out["paper"] = run_bench(args.paper_bundle, [Variant("onnxruntime", "fp32"), Variant("onnxruntime", "int8"),
                                                 Variant("torch", "fp32")],
                             [1, 8], n_images=16, repeats=3, accuracy_images=12, log=print)
    print("paper done", time.time() - t0)
    with tempfile.TemporaryDirectory() as td:
        paths = synthetic_photos(128, Path(td))
        out["rank_vs_per_pair"] = rank_vs_per_pair(load_bundle(args.default_bundle), paths, [8, 32, 128],
                                                   max_baseline_pairs=64)
    print("rank done", time.time() - t0)
    crops = {}
    for k in (1, args.crops):
        res = evaluate(Scorer(args.default_bundle, crops=k), args.hr_manifest, baselines=False)
        fg = res["methods"]["FGResQ"]
        crops[f"crops={k}"] = {"average": fg["average"],
                               "per_task_acc": {t: v["acc"] for t, v in fg["per_task"].items()}}
    out["multicrop"] = crops
    print("crops done", time.time() - t0)
    args.out.write_text(json.dumps(out, indent=2, default=float))


if __name__ == "__main__":
    main()
