"""The torch model of an fp32 bundle that ships without its checkpoint, read back from encoder.onnx and heads.npz.

Why: the embedded default leaves its training checkpoint out of the wheel, yet refitting its low-level prior or
its naturalness term on the shipped towers needs the torch model, and retraining them costs over an hour and does
not reproduce them on a CPU with another vector ISA. The exporter keeps every parameter's name as the graph's
initializer name, so the weights come back exactly; the comparison head is heads.npz. Parameters only training
reads (the degradation tower's stage-1 projection) are not in the graph: they stay at their initial values and
the checkpoint's metadata names them. The rebuilt model must reproduce the graph (ONNX Runtime vs torch on seeded
views, |Δscore| ≤ 1e-4, |Δfeature| ≤ 1e-3) or nothing is written.

``python -m fgresq_sdk.export.read_back BUNDLE --out CKPT [--drop-prior] [--force]``
"""
from __future__ import annotations

import argparse
import copy
import io
import json
import sys
from pathlib import Path

import numpy as np

from fgresq_sdk.errors import BundleError, display_path
from fgresq_sdk.heads import HEADS_NPZ_KEYS, tempered_compare_head

# not in the exported graph; a bundle that lacks them still reads back (they are recorded as left at init)
TRAINING_ONLY = ("degradation_proj",)
SCORE_TOL, FEATURE_TOL = 1e-4, 1e-3


def graph_initializers(encoder: bytes) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model_from_string(encoder)
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def read_back(bundle_dir: str | Path, *, drop_prior: bool = False, seed: int = 0):
    """(model, record): the bundle's FGResQ in eval mode; with drop_prior, the same model without its low-level
    prior (what train/fit_prior.py fits on). Raises BundleError when the bundle cannot be read back exactly."""
    import torch

    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.model import FGResQ

    bundle = load_bundle(bundle_dir)
    where = display_path(Path(bundle_dir))
    if bundle.precision != "fp32":
        raise BundleError(f"{where}: a {bundle.precision} bundle has rounded weights; read back an fp32 one")
    encoder = bundle.read("encoder")
    weights = graph_initializers(encoder)
    with np.load(io.BytesIO(bundle.read("heads"))) as z:
        heads = {param: z[key] for key, param in HEADS_NPZ_KEYS.items()}
    # the score head is also in the encoder graph: that copy is the one loaded, heads.npz's must agree with it
    head = {k: v for k, v in heads.items() if not k.startswith("compare_head.")}
    weights.update({k: v for k, v in heads.items() if k.startswith("compare_head.")})
    cal = bundle.manifest.get("compare_calibration")
    if cal:  # train/calibrate_compare.py tempered the head in heads.npz: the model is the head it was fitted on
        w, b = tempered_compare_head(weights["compare_head.weight"], weights["compare_head.bias"],
                                     float(cal["temperature"]), float(cal["similar_offset"]), undo=True)
        weights["compare_head.weight"], weights["compare_head.bias"] = w.astype(np.float32), b.astype(np.float32)
    torch.manual_seed(seed)
    model = FGResQ(copy.deepcopy(bundle.config)).eval()
    state = model.state_dict()
    missing = [k for k in state if k not in weights and k not in TRAINING_ONLY]
    if missing:
        raise BundleError(f"{where}: the graph does not hold {len(missing)} of the model's parameters under their "
                          f"names (e.g. {', '.join(missing[:3])}): rewritten at export (ViT attention) or merged "
                          "with an identical tensor (e.g. untrained zero biases); only such a bundle's own checkpoint "
                          "has them")
    for k, v in head.items():  # heads.npz repeats the score head: both copies must agree
        if not np.array_equal(weights.get(k), v):
            raise BundleError(f"{where}: {k} differs between encoder.onnx and heads.npz")
    left = [k for k in state if k not in weights]
    model.load_state_dict({k: torch.from_numpy(np.array(weights[k])) if k in weights else state[k] for k in state})
    record = {"bundle": bundle.name, "training_only_left_at_init": left,
              **check_against_graph(model, encoder, bundle.config["preprocess"]["size"], where, seed)}
    if drop_prior and model.prior is not None:
        cfg = copy.deepcopy(model.cfg)
        cfg.pop("prior")
        plain = FGResQ(cfg).eval()
        plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("prior.")})
        model = plain
    return model, record


def check_against_graph(model, encoder: bytes, size: int, where: str, seed: int) -> dict[str, float]:
    """ONNX Runtime on the graph vs the rebuilt torch model, on seeded views around the normalised range."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(seed).normal(0.0, 0.8, (4, 3, size, size)).astype(np.float32)
    sess = ort.InferenceSession(encoder, providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x})))
    with torch.no_grad():
        q, s = model(torch.from_numpy(x))
    d_score = float(np.abs(got["score"] - s.numpy()).max())
    d_feat = float(np.abs(got["features"] - q.numpy()).max())
    if not (d_score <= SCORE_TOL and d_feat <= FEATURE_TOL):
        raise BundleError(f"{where}: the rebuilt model does not reproduce encoder.onnx (max |Δscore| {d_score:.2g}, "
                          f"|Δfeature| {d_feat:.2g}); nothing written")
    return {"max_abs_score_delta": d_score, "max_abs_feature_delta": d_feat}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fgresq_sdk.export.read_back", description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path, help="an fp32 bundle folder (e.g. fgresq_sdk/default_model)")
    ap.add_argument("--out", type=Path, required=True, help="the checkpoint to write (.safetensors)")
    ap.add_argument("--drop-prior", action="store_true", help="without the low-level prior (fit_prior's input)")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists")
    a = ap.parse_args(argv)
    if a.out.exists() and not a.force:
        print(f"error: {display_path(a.out)}: exists (pass --force to replace it)", file=sys.stderr)
        return 2
    if a.out.exists() and not a.out.is_file():
        print(f"error: {display_path(a.out)}: not a file (refused)", file=sys.stderr)
        return 2
    try:
        model, record = read_back(a.bundle, drop_prior=a.drop_prior)
    except BundleError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from fgresq_sdk.model import save_checkpoint

    save_checkpoint(model, a.out, source=f"read back from {record['bundle']} ({display_path(a.bundle)})"
                    + (", low-level prior dropped" if a.drop_prior else ""),
                    extra={"read_back": json.dumps(record, sort_keys=True)})
    print(json.dumps(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
