"""int8 bundles: ONNX Runtime dynamic quantization of the encoder graph's vision towers.

Dynamic quantization stores MatMul/Gemm weights as int8 and quantizes activations per batch at run
time, so it needs no calibration set and keeps the bundle self-contained. The scheme was chosen by
measurement (../shared/notes/int8-on-avx2.md; README, Performance; bench/int8_accuracy.py):
- weights per channel with `reduce_range` (7-bit): ONNX Runtime's U8S8 kernels saturate on CPUs
  without AVX-512 VNNI (AVX2-only, e.g. AMD Zen 3) when the full int8 range is used; that made
  scores move by up to 0.24 there. reduce_range cuts the error 15–30× on such CPUs and costs nothing
  measurable on VNNI CPUs;
- the small heads after the towers (task MLP, prompt MLP, score head, the low-level prior's gate and
  readout) stay fp32: they are the next largest error source and a negligible share of the time;
- only weight×activation products: the attention's activation×activation MatMuls stay fp32;
- where that is not close enough, attention in-projections (q, k, v) stay fp32 too: the image tower's
  first 1, 2, 4… blocks, then all of its blocks, then both towers' (`fp32_rungs`). Measured on the
  trained default model, 40 held-out photos at 5 blur levels:
  max |Δscore| 0.0165 / 0.0118 at batch 1 / 8 with every tower weight in int8, 0.0087 / 0.0094 with the image
  tower's in-projections in fp32 — identical on AVX-512 VNNI and on the AVX2-only kernels reached under
  qemu's Zen 3 CPUID (7-bit weights: no saturation, the same integers); quantizing the degradation tower or
  the MLPs changed nothing measurable; the image tower's first two blocks alone: 0.0097 / 0.0081. The price:
  `score` of 30 photos with a ViT-B/16 bundle ran 2.1–2.3× faster than fp32 with every image-tower
  in-projection in fp32, against ~2.8× with none (README, Performance), hence the finer rungs first.
So each export validates (on `--calibration` photos, or synthetic ones) and keeps the fastest rung of
`fp32_rungs` whose max |Δscore| stays within MAX_SCORE_DELTA at every batch size; model.json names the rung
and says whether the bound was met (the last rung is kept when none meets it, and export warns).
The torch checkpoint is not copied: it is the fp32 reference, not this model.

Static QDQ quantization calibrated on photos was measured against this (README, Performance;
../shared/notes/int8-on-avx2.md): no faster on either kind of CPU, as accurate only when calibrated on photos like
the ones scored (and ~10× worse when calibrated on other images), so dynamic stays. `--calibration DIR`
gives the photos the int8 bundle is *validated* on (and its rung chosen by): each export measures int8
against fp32 on this CPU (max |Δscore| at batch 1 and 8, pair agreement within groups of blurred versions)
and records it in model.json under quantization.validation, with the CPU model and ISA and where the photos
came from.
"""
from __future__ import annotations

import platform
import re
from pathlib import Path

import numpy as np

from fgresq_sdk.errors import BundleError

from .derive import derive_bundle
from .onnx_export import PRIOR_PREFIX

INT8_ENCODER = "encoder.int8.onnx"
QUANTIZED_OPS = ["MatMul", "Gemm"]
# Graph nodes outside the two vision towers (their names come from the torch module path). The low-level prior's
# gate and readout read ~2,000 statistics of very different ranges (means, log σ, classical statistics down to
# log 1e-6): one uint8 scale per batch for all of them moved the default's scores by up to 1.0; in fp32, 0.003.
FP32_PREFIXES = ("/task_mlp/", "/prompt_mlp/", "/head/", PRIOR_PREFIX)
# The attention in-projections of a transformer block as the exporter names them: q, k and v apart (the
# current export), or one packed in_proj MatMul (bundles exported before it, e.g. the embedded default).
# A name also used by an activation×activation MatMul is kept fp32 by the weight rule anyway.
ATTENTION_IN = ("/attn/q/MatMul", "/attn/k/MatMul", "/attn/v/MatMul", "/attn/MatMul")
IMAGE_TOWER, DEGRADATION_TOWER = "/image_tower/", "/degradation_tower/"
_BLOCK = re.compile(r"/resblocks\.(\d+)/")
# The last two rungs of the ladder (every in-projection of the image tower, then of both towers in fp32);
# the rungs before them keep only the image tower's first blocks in fp32 ("image-attention-in:k").
ALL_IMAGE_RUNG, ALL_RUNG = "image-attention-in", "attention-in"
# The accuracy an int8 bundle must keep against fp32 on its validation photos: far below the score gaps
# between versions of one photo that ranking separates (README, Performance).
MAX_SCORE_DELTA = 0.01
# Photos validated on (each at 5 blur levels). The error is a tail: on the default model 8 held-out photos
# showed max |Δscore| 0.0075 where 40 showed 0.0165, so fewer photos choose too fast a rung.
VALIDATION_PHOTOS = 24


def _nodes_to_keep_fp32(model, in_proj: frozenset[str] = frozenset()) -> list[str]:
    """Head Gemms, MatMuls whose second input is not a constant weight (attention's QKᵀ and AV), and the
    attention in-projections named in `in_proj`."""
    weights = {t.name for t in model.graph.initializer}
    return [node.name for node in model.graph.node if node.op_type in QUANTIZED_OPS and (
        node.name.startswith(FP32_PREFIXES) or node.input[1] not in weights or node.name in in_proj)]


def _quantizer_names(model, names: list[str]) -> list[str]:
    """`names` as ONNX Runtime's dynamic quantizer matches nodes_to_exclude: it first rewrites each Gemm as a
    MatMul named "<name>_MatMul" (+ an Add), so a Gemm excluded by its own name was quantized anyway (the
    conv-stats default's heads and prior, all Gemms, went int8 and its scores moved by up to 1.0). Both names
    are given, for quantizers that keep the Gemm."""
    gemms = {node.name for node in model.graph.node if node.op_type == "Gemm"}
    return [alias for name in names for alias in ((name, name + "_MatMul") if name in gemms else (name,))]


def _in_projections(model, tower: str) -> dict[int, set[str]]:
    """Attention in-projection MatMuls of `tower`, by transformer block index."""
    blocks: dict[int, set[str]] = {}
    for node in model.graph.node:
        found = _BLOCK.search(node.name)
        if node.op_type == "MatMul" and node.name.startswith(tower) and node.name.endswith(ATTENTION_IN) and found:
            blocks.setdefault(int(found.group(1)), set()).add(node.name)
    return blocks


def fp32_rungs(model) -> list[tuple[str, frozenset[str]]]:
    """What stays fp32 besides the heads and the activation×activation MatMuls, fastest first: (rung name,
    in-projection MatMuls kept fp32). Validation keeps the first rung that meets the bound.

    The error comes mostly from the image tower's first blocks (measured on the default model, 40 held-out
    photos: its block 0 alone cut max |Δscore| from 0.0165 to 0.0116, blocks 0–1 to 0.0097, the other
    blocks alone by less), so the image tower's first 1, 2, 4, 8… blocks go fp32 before all of them: a
    deep tower pays for the few blocks that matter, not for every block."""
    image = _in_projections(model, IMAGE_TOWER)
    order = sorted(image)
    rungs = [("none", frozenset())]
    k = 1
    while k < len(order):
        rungs.append((f"{ALL_IMAGE_RUNG}:{k}", frozenset().union(*(image[b] for b in order[:k]))))
        k *= 2
    every_image = frozenset().union(*image.values())
    rungs.append((ALL_IMAGE_RUNG, every_image))
    rungs.append((ALL_RUNG, every_image.union(*_in_projections(model, DEGRADATION_TOWER).values())))
    # towers without attention blocks (CNNs) would repeat a graph: each rung must keep more in fp32
    return [r for i, r in enumerate(rungs) if i == 0 or r[1] != rungs[i - 1][1]]


def _worst_delta(validation: dict) -> float:
    return max(r["max_abs_dscore"] for r in validation["by_batch_size"].values())


def _validation_images(calibration: Path | None, limit: int, workdir: Path) -> tuple[list, str]:
    """Photos (paths) to validate on and a description of where they came from.

    With `--calibration DIR`: up to `limit` image files of DIR (sorted by name; subfolders too). Without:
    the deterministic synthetic photos of fgresq_sdk.photos (seed 0).
    """
    from fgresq_sdk.preprocess import is_image_file

    if calibration is not None:
        root = Path(calibration)
        if not root.is_dir():
            raise BundleError(f"--calibration {root}: not a folder of photos")
        files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))
        if not files:
            raise BundleError(f"--calibration {root}: no image files in it (.jpg, .png, .webp…)")
        return files[:limit], f"{root.name}/ ({min(len(files), limit)} of {len(files)} photos, sorted by name)"
    from fgresq_sdk.photos import synthetic_photos

    return synthetic_photos(limit, workdir / "validation-photos", seed=0), \
        f"synthetic photos (fgresq_sdk.photos.synthetic_photos, seed 0, {limit} images)"


BLUR_LEVELS = (0, 1, 2, 3, 5)  # each photo also blurred: groups with a known quality order, as in ranking


class Int8Validation:
    """int8 against fp32 on `photos` (each at BLUR_LEVELS), on this CPU: max |Δscore| per batch size, and
    agreement on the pairs of versions of one photo — score order where fp32 separates them by ≥ min_gap,
    and the comparison head's 3-way verdict on all of them.

    The fp32 side (decoded photos, fp32 features and scores, the pairs) is computed once here; calling the
    object measures one int8 graph against it, so the export's rungs share one reference."""

    def __init__(self, fp32_onnx: Path, preprocess_spec: dict, heads_npz: bytes, photos: list,
                 batch_sizes: tuple[int, ...] = (1, 8), min_gap: float = 0.005):
        import itertools

        from PIL import ImageFilter

        from fgresq_sdk.heads import CompareHeadNP
        from fgresq_sdk.preprocess import load_image, preprocess

        tensors, groups = [], []
        for p in photos:
            img = load_image(p)
            group = []
            for radius in BLUR_LEVELS:
                group.append(len(tensors))
                tensors.append(preprocess(img.filter(ImageFilter.GaussianBlur(radius)) if radius else img,
                                          preprocess_spec))
            groups.append(group)
        self.x = np.stack(tensors).astype(np.float32)
        self.batch_sizes, self.min_gap, self.n_photos = batch_sizes, min_gap, len(photos)
        self.head = CompareHeadNP.from_npz(heads_npz)
        q32, self.s32 = self._run(fp32_onnx, max(batch_sizes))
        pairs = [pr for g in groups for pr in itertools.permutations(g, 2)]
        self.i, self.j = map(np.asarray, zip(*pairs))
        self.separated = np.abs(self.s32[self.i] - self.s32[self.j]) >= min_gap
        self.v32 = self.head.all_pairs_probs(q32)[self.i, self.j].argmax(-1)

    def _run(self, path: Path, bs: int) -> tuple[np.ndarray, np.ndarray]:
        import onnxruntime as ort

        from fgresq_sdk.backends.onnxruntime_backend import session_options

        sess = ort.InferenceSession(str(path), session_options(), providers=["CPUExecutionProvider"])
        out = [sess.run(None, {"image": self.x[k:k + bs]}) for k in range(0, len(self.x), bs)]
        return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])

    def __call__(self, int8_onnx: Path) -> dict:
        i, j, s32, separated = self.i, self.j, self.s32, self.separated
        per_batch = {}
        for bs in self.batch_sizes:
            q8, s8 = self._run(int8_onnx, bs)
            per_batch[str(bs)] = {
                "max_abs_dscore": round(float(np.max(np.abs(s8 - s32))), 5),
                "mean_abs_dscore": round(float(np.mean(np.abs(s8 - s32))), 6),
                "pair_order_agreement": (round(float(((s32[i] > s32[j]) == (s8[i] > s8[j]))[separated].mean()), 5)
                                         if separated.any() else None),
                "verdict_agreement": round(float((self.head.all_pairs_probs(q8)[i, j].argmax(-1) == self.v32).mean()),
                                           5)}
        return {"images": len(self.x), "photos": self.n_photos, "blur_radii": list(BLUR_LEVELS), "pairs": len(i),
                "pairs_separated": int(separated.sum()), "min_gap": self.min_gap, "by_batch_size": per_batch}


def quantize_bundle(src: str | Path, out: str | Path, *, per_channel: bool = True, force: bool = False,
                    calibration: str | Path | None = None, validate: bool = True,
                    validation_photos: int = VALIDATION_PHOTOS,
                    log=None) -> Path:
    """An int8 bundle from fp32 bundle `src`. With `validate` (the default), the result is measured against
    fp32 on this CPU — on the photos of `calibration` (a folder) or on synthetic ones — and the numbers go
    into model.json. The scheme is dynamic either way: static (calibrated) QDQ was measured no faster and
    no more accurate (README, Performance), so the photos validate rather than calibrate."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from fgresq_sdk.bundle import load_bundle
    from fgresq_sdk.cpu import cpu_isa, cpu_model

    source = load_bundle(src)
    workdir = Path(out).parent
    if calibration is not None:
        _validation_images(Path(calibration), validation_photos, workdir)  # refuse a bad folder before working

    def make(src_onnx: Path, dst_onnx: Path) -> None:
        import logging
        import tempfile

        import onnx
        import onnxruntime

        graph = onnx.load(str(src_onnx), load_external_data=False)

        def quantize(rung: str, in_proj: frozenset[str]) -> None:
            keep = _nodes_to_keep_fp32(graph, in_proj)
            logging.disable(logging.WARNING)  # the quantizer's advice on the root logger is not for our users
            try:
                quantize_dynamic(str(src_onnx), str(dst_onnx), weight_type=QuantType.QInt8, per_channel=per_channel,
                                 reduce_range=True, op_types_to_quantize=QUANTIZED_OPS,
                                 nodes_to_exclude=_quantizer_names(graph, keep),
                                 extra_options={"MatMulConstBOnly": True})
            finally:
                logging.disable(logging.NOTSET)
            details.update(fp32_nodes=len(keep), fp32_rung=rung)

        rungs = fp32_rungs(graph)
        if not validate:
            quantize(*rungs[0])
            details["validation"] = None
            return
        with tempfile.TemporaryDirectory(prefix="fgresq-int8-") as td:
            photos, where = _validation_images(None if calibration is None else Path(calibration),
                                               validation_photos, Path(td))
            measure = Int8Validation(src_onnx, source.preprocess, source.read("heads"), photos)
        tried = []
        for rung, in_proj in rungs:
            quantize(rung, in_proj)
            result = measure(dst_onnx)
            worst = _worst_delta(result)
            tried.append({"rung": rung, "max_abs_dscore": worst})
            meets = worst <= MAX_SCORE_DELTA
            if meets:
                break
        details["calibration"] = {"source": where, "used_for": "validation (dynamic quantization needs no "
                                  "calibration data)"}
        details["validation"] = {"cpu": cpu_model(), "isa": cpu_isa(), "onnxruntime": onnxruntime.__version__,
                                 "reference": "fp32 encoder of the source bundle, ONNX Runtime",
                                 "max_abs_dscore_bound": MAX_SCORE_DELTA,
                                 "meets_bound": meets, "rungs_tried": tried, **result}

    details = {"method": "onnxruntime dynamic", "ops": QUANTIZED_OPS,
               "weights": ("int8 per-channel" if per_channel else "int8 per-tensor") + ", reduce_range (7-bit)",
               "scheme": {"kind": "dynamic", "activations": "uint8, per batch", "weights": "int8",
                          "weight_bits": 7, "per_channel": per_channel},
               "fp32": "heads (task_mlp, prompt_mlp, head), the low-level prior's gate and readout, "
                       "activation×activation MatMuls and the attention in-projections named by fp32_rung (none; "
                       "image-attention-in:k: the image tower's first k blocks'; image-attention-in: all of the image "
                       "tower's; attention-in: both towers')",
               "built_on": {"machine": platform.machine(), "cpu": cpu_model(), "isa": cpu_isa()}}
    path = derive_bundle(src, out, precision="int8", encoder_file=INT8_ENCODER, make_encoder=make,
                         details_key="quantization", details=details, force=force)
    if log is not None and details.get("validation"):
        log(validation_summary(details))
    return path


def validation_summary(details: dict) -> str:
    """One line on how close the int8 bundle stays to fp32, and a warning when it misses the bound."""
    v = details["validation"]
    deltas = " / ".join(f"{r['max_abs_dscore']:.4f} (batch {b})" for b, r in v["by_batch_size"].items())
    kept = [r["pair_order_agreement"] for r in v["by_batch_size"].values() if r["pair_order_agreement"] is not None]
    order = f", pair order kept {100 * min(kept):.1f} %" if kept else ""
    line = (f"int8 vs fp32 on {details['calibration']['source']}: max |Δscore| {deltas}{order}; "
            f"fp32 attention in-projections: {details['fp32_rung']}")
    if details["calibration"]["source"].startswith("synthetic") and v["meets_bound"]:
        # measured on the default model: 0.0067 on 24 synthetic photos, 0.0165 on 40 held-out real ones
        line += " (synthetic photos understate the error on real ones ~2×: --calibration DIR checks yours)"
    if not v["meets_bound"]:
        line = (f"warning: {line} — above the {v['max_abs_dscore_bound']} bound even with every attention "
                "in-projection in fp32; check decisions on your own photos (--calibration DIR)")
    return line
