"""Build checkpoints in the released FGResQ.pth format from transformers CLIPVisionModel towers,
and an independent reference forward written with transformers modules (for importer tests)."""
from __future__ import annotations

B16 = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
           image_size=224, patch_size=16)
TINY = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
            image_size=224, patch_size=32)


def hf_tower(shape: dict, seed: int):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_act="quick_gelu", layer_norm_eps=1e-5, **shape)
    model = CLIPVisionModel(cfg).eval()
    # Random-init LayerNorms are identity; perturb every tensor so a wrong mapping cannot hide.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model


def official_state(shape: dict, seed: int, legacy_names: bool = True):
    """Two towers + heads, named exactly like the released FGResQ.pth."""
    import torch

    img, deg = hf_tower(shape, seed), hf_tower(shape, seed + 1)
    d = shape["hidden_size"]
    g = torch.Generator().manual_seed(seed + 2)

    def rnd(*s, scale=0.05):
        return torch.randn(*s, generator=g) * scale

    sd = {}
    for prefix, tower in (("clip_model", img), ("task_cls_clip", deg)):
        level = ".vision_model." if legacy_names else "."
        for k, v in tower.state_dict().items():
            sd[prefix + level + k] = v.clone()
    sd.update({
        "task_mlp.0.weight": rnd(d, d), "task_mlp.0.bias": rnd(d), "task_mlp.2.weight": rnd(d, d),
        "task_mlp.2.bias": rnd(d), "prompt": rnd(1, d, scale=1.0), "prompt_mlp.weight": rnd(d, d),
        "prompt_mlp.bias": rnd(d), "head.weight": rnd(1, 3 * d), "head.bias": rnd(1),
        "compare_head.weight": rnd(3, 6 * d), "compare_head.bias": rnd(3),
    })
    return sd, img, deg


RELEASE_SCORE_SCALE = 0.3  # the current release: score = sigmoid(0.3 · head(q))


def release_preprocess(path) -> "np.ndarray":
    """The current release's FGResQ._preprocess_image, written from its facts with OpenCV + numpy:
    cv2.imread → RGB uint8 → cv2.resize 256×256 INTER_LINEAR → /255 → CenterCrop 224 → CLIP normalise."""
    import cv2
    import numpy as np

    img = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (256, 256), interpolation=cv2.INTER_LINEAR)
    x = img.astype(np.float32) / 255.0
    top = int(round((256 - 224) / 2.0))
    x = x[top:top + 224, top:top + 224]
    mean = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
    return np.ascontiguousarray(((x - mean) / std).transpose(2, 0, 1))


def reference_forward(sd, img, deg, x, score_scale: float = 1.0):
    """FGResQ written independently with transformers' towers and plain functional ops."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        f = img(pixel_values=x).pooler_output
        dd = deg(pixel_values=x).pooler_output
        h = F.linear(F.silu(F.linear(dd, sd["task_mlp.0.weight"], sd["task_mlp.0.bias"])),
                     sd["task_mlp.2.weight"], sd["task_mlp.2.bias"])
        t = F.linear(F.softmax(h, dim=1) * sd["prompt"], sd["prompt_mlp.weight"], sd["prompt_mlp.bias"])
        q = torch.cat([f, t, f + t], dim=1)
        score = torch.sigmoid(score_scale * F.linear(q, sd["head.weight"], sd["head.bias"]))[:, 0]
    return q, score


def reference_compare(sd, q0, q1, order="released"):
    """Probabilities in (first better, second better, similar) order. The authors' latest inference code
    reads the stored logits as (second better, first better, similar): 'released' maps them."""
    import torch

    logits = torch.cat([q0, q1], dim=1) @ sd["compare_head.weight"].T + sd["compare_head.bias"]
    p = torch.softmax(logits, dim=1)
    return p[:, [1, 0, 2]] if order == "released" else p


