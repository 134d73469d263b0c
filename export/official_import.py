"""Import the released FGResQ checkpoint (sxfly99/FGRestore `FGResQ.pth`) into our format.

The release stores both towers as Hugging Face `CLIPVisionModel` state dicts (`clip_model.*` and
`task_cls_clip.*`) next to the prompt and heads. We rename those tensors to open_clip's layout (q/k/v
fused into one in_proj, `pre_layrnorm` → `ln_pre`, …) so one model definition serves everything.
Loading uses `torch.load(weights_only=True)`: a checkpoint that needs arbitrary pickled objects is refused.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fgresq_sdk.errors import BundleError
from fgresq_sdk.verdict import LOGIT_ORDER

# What the authors' current inference code (model/FGResQ.py, FGResQ._preprocess_image and the score path)
# does, as data: cv2 INTER_LINEAR to 256×256, torchvision CenterCrop 224, CLIP mean/std; score =
# sigmoid(0.3 · head(q)) since 2025-11-19. `squash` and k = 1 are the earlier behaviour.
RELEASE_SCORE_SCALE = 0.3
PREPROCESS_CHOICES = ("official", "squash")


def release_preprocess(choice: str, mean, std) -> dict[str, Any]:
    """The bundle preprocess spec (docs/preprocess-spec.md) for `--preprocess official|squash`."""
    if choice == "official":
        return {"size": 224, "resize": {"method": "bilinear-cv2", "size": [256, 256]},
                "crop": {"method": "center", "size": [224, 224]}, "mean": list(mean), "std": list(std)}
    if choice == "squash":
        return {"size": 224, "resize": {"method": "bilinear-antialias", "size": [224, 224]},
                "mean": list(mean), "std": list(std)}
    raise BundleError(f"unknown --preprocess '{choice}' (choose from: {', '.join(PREPROCESS_CHOICES)})")


def release_behaviour(preprocess: str, score_scale: float, compare_order: str) -> str:
    """One line saying which release behaviour a bundle follows (printed after importing)."""
    current = preprocess == "official" and score_scale == RELEASE_SCORE_SCALE and compare_order == "released"
    what = (f"preprocess {preprocess} ({'cv2 bilinear 256² + center crop 224' if preprocess == 'official' else 'squash to 224² with antialiasing'}), "
            f"score = sigmoid({score_scale:g}·head), compare order {compare_order}")
    return ("follows the authors' current release: " if current else "differs from the current release: ") + what


OFFICIAL_TOWERS = {"clip_model": "image_tower", "task_cls_clip": "degradation_tower"}
# Heads and prompt keep their official names in our model.
HEAD_KEYS = ("head.weight", "head.bias", "compare_head.weight", "compare_head.bias", "prompt",
             "task_mlp.0.weight", "task_mlp.0.bias", "task_mlp.2.weight", "task_mlp.2.bias",
             "prompt_mlp.weight", "prompt_mlp.bias")
# Buffers transformers may or may not save; never weights.
IGNORED_SUFFIXES = ("embeddings.position_ids",)

_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")
_LAYER_RENAMES = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
}
_TOP_RENAMES = {
    "embeddings.class_embedding": "class_embedding",
    "embeddings.patch_embedding.weight": "conv1.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "pre_layrnorm.weight": "ln_pre.weight", "pre_layrnorm.bias": "ln_pre.bias",
    "post_layernorm.weight": "ln_post.weight", "post_layernorm.bias": "ln_post.bias",
}


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Load a .pth safely and unwrap the usual containers ('model', 'state_dict', DataParallel 'module.')."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise BundleError(f"{path}: checkpoint not found")
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about the pickle protocol; our error says it all
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors vary; all mean "not a plain tensor checkpoint"
        text = str(exc).strip()
        if "Weights only load failed" in text:
            why = "it holds pickled objects other than tensors; refused because loading them could run code"
        else:
            why = text.splitlines()[0] if text else type(exc).__name__
        raise BundleError(f"{path}: cannot load as a weights-only torch checkpoint ({why})") from None
    for wrapper in ("model", "state_dict"):
        if isinstance(obj, dict) and wrapper in obj and isinstance(obj[wrapper], dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise BundleError(f"{path}: not a state dict")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
        raise BundleError(f"{path}: state dict holds non-tensor entries: {bad}")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


def _tower_subdict(sd: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Tower tensors under `prefix.vision_model.` (transformers < 5) or `prefix.` (transformers ≥ 5)."""
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix + "."):
            continue
        rest = key[len(prefix) + 1:]
        if rest.startswith("vision_model."):
            rest = rest[len("vision_model."):]
        out[rest] = value
    return out


def hf_vision_to_open_clip(hf: dict[str, Any], where: str) -> tuple[dict[str, Any], list[str]]:
    """Rename one CLIPVisionModel state dict to open_clip VisionTransformer names.

    Returns (converted, unexpected keys). q/k/v projections are stacked into in_proj in that order.
    """
    import torch

    out: dict[str, Any] = {}
    unexpected: list[str] = []
    qkv: dict[int, dict[str, Any]] = {}
    for key, value in hf.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        if key in _TOP_RENAMES:
            out[_TOP_RENAMES[key]] = value
            continue
        m = _LAYER.match(key)
        if m:
            idx, rest = int(m.group(1)), m.group(2)
            base = f"transformer.resblocks.{idx}."
            if rest in _LAYER_RENAMES:
                out[base + _LAYER_RENAMES[rest]] = value
                continue
            qm = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
            if qm:
                qkv.setdefault(idx, {})[f"{qm.group(1)}.{qm.group(2)}"] = value
                continue
        unexpected.append(f"{where}.{key}")
    for idx, parts in qkv.items():
        base = f"transformer.resblocks.{idx}.attn."
        for kind in ("weight", "bias"):
            names = [f"{c}.{kind}" for c in "qkv"]
            if all(n in parts for n in names):
                out[base + f"in_proj_{kind}"] = torch.cat([parts[n] for n in names], dim=0)
            else:
                missing = [n for n in names if n not in parts]
                raise BundleError(f"{where}: layer {idx} lacks attention projections {missing}")
    return out, unexpected


def convert_official(sd: dict[str, Any], degradation_sd: dict[str, Any] | None = None) -> tuple[dict, list[str]]:
    """Official FGResQ state dict → our state-dict names (without checking shapes yet)."""
    ours: dict[str, Any] = {}
    unexpected: list[str] = []
    claimed = set()
    for official, mine in OFFICIAL_TOWERS.items():
        sub = _tower_subdict(sd, official)
        claimed.update(k for k in sd if k.startswith(official + "."))
        conv, unexp = hf_vision_to_open_clip(sub, official)
        ours.update({f"{mine}.{k}": v for k, v in conv.items()})
        unexpected += unexp
    for key in HEAD_KEYS:
        if key in sd:
            ours[key] = sd[key]
            claimed.add(key)
    unexpected += sorted(k for k in sd if k not in claimed)
    if degradation_sd is not None:
        sub = {k: v for k, v in _tower_subdict(degradation_sd, "clip_model").items()
               if not k.startswith(("text_model.", "visual_projection", "text_projection", "logit_scale"))}
        conv, unexp = hf_vision_to_open_clip(sub, "Degradation.clip_model")
        ours.update({f"degradation_tower.{k}": v for k, v in conv.items()})
        unexpected += unexp
        proj = degradation_sd.get("clip_model.visual_projection.weight")
        if proj is not None:
            ours["degradation_proj"] = proj.t().contiguous()
    return ours, unexpected


# The authors' latest inference code (sxfly99/FGResQ) reads the comparison logits as (second better,
# first better, similar): their training data encoded "A better" as class 1. Our order is (first better,
# second better, similar), so "released" swaps rows 0 and 1 of compare_head; "stored" keeps them as saved
# (the reading of the earlier sxfly99/FGRestore inference code).
COMPARE_ORDERS = ("released", "stored")
RELEASED_ROWS = [1, 0, 2]  # our logit row k is the release's row RELEASED_ROWS[k] (and back: a swap)


def _reorder_compare_head(ours: dict[str, Any], order: str) -> None:
    if order not in COMPARE_ORDERS:
        raise BundleError(f"unknown compare order '{order}' (choose from: {', '.join(COMPARE_ORDERS)})")
    if order == "released":
        for key in ("compare_head.weight", "compare_head.bias"):
            if key in ours and ours[key].shape[0] == 3:
                ours[key] = ours[key][RELEASED_ROWS].clone()


def load_official(path: str | Path, config: str | dict = "fgresq-vit-b16",
                  degradation: str | Path | None = None, compare_order: str = "released"):
    """Build our FGResQ from the released checkpoint, refusing anything that does not fit exactly."""
    import torch

    from fgresq_sdk.model import FGResQ

    sd = read_state_dict(path)
    dsd = read_state_dict(degradation) if degradation else None
    ours, unexpected = convert_official(sd, dsd)
    _reorder_compare_head(ours, compare_order)
    torch.manual_seed(0)  # only degradation_proj (stage-1 only, absent from the release) keeps its init
    model = FGResQ(config)
    target = model.state_dict()
    optional = {"degradation_proj"}
    missing = sorted(k for k in target if k not in ours and k not in optional)
    unexpected += sorted(k for k in ours if k not in target)
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(target[k].shape)}"
             for k, v in ours.items() if k in target and tuple(v.shape) != tuple(target[k].shape)]
    problems = []
    if missing:
        problems.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}{' …' if len(missing) > 8 else ''}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}"
                        f"{' …' if len(unexpected) > 8 else ''}")
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): {'; '.join(wrong[:4])}{' …' if len(wrong) > 4 else ''}")
    if problems:
        raise BundleError(f"{path}: not an FGResQ checkpoint for config {model.cfg['name']}: " + " | ".join(problems))
    model.load_state_dict({k: v.float() for k, v in ours.items()}, strict=False)
    return model.eval()


def import_official(path: str | Path, out: str | Path, *, config: str | dict = "fgresq-vit-b16",
                    degradation: str | Path | None = None, compare_order: str = "released",
                    preprocess: str = "official", score_scale: float = RELEASE_SCORE_SCALE,
                    force: bool = False) -> Path:
    """FGResQ.pth → complete bundle (safetensors checkpoint + ONNX graphs + manifest).

    Defaults reproduce the authors' current inference code (see RELEASE_SCORE_SCALE, release_preprocess)."""
    from fgresq_sdk.config import load_config

    from .onnx_export import export_bundle
    from .staging import check_out_dir

    check_out_dir(out, force)  # refuse before the slow part
    if not (isinstance(score_scale, (int, float)) and 0 < score_scale < float("inf")):
        raise BundleError(f"--score-scale must be a positive number (got {score_scale})")
    cfg = load_config(config)
    cfg["preprocess"] = release_preprocess(preprocess, cfg["preprocess"]["mean"], cfg["preprocess"]["std"])
    cfg["score_scale"] = float(score_scale)
    model = load_official(path, cfg, degradation, compare_order)
    source = f"official FGResQ checkpoint {Path(path).name}" + (f" + {Path(degradation).name}" if degradation else "")
    return export_bundle(model, out, source=source, force=force,
                         extra={"import": {"compare_order": compare_order, "preprocess": preprocess,
                                           "score_scale": float(score_scale),
                                           "release_behaviour": release_behaviour(preprocess, float(score_scale),
                                                                                  compare_order),
                                           "logit_order_in_checkpoint":
                                           [LOGIT_ORDER[k] for k in RELEASED_ROWS] if compare_order == "released"
                                           else list(LOGIT_ORDER)}})
