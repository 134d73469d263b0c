"""Stage 1: degradation-aware feature learning (DFL).

The degradation tower (and, for ViT towers, its CLIP projection ``degradation_proj``) is fine-tuned so
that projected image features align with FROZEN text-tower embeddings of one prompt per restoration task
(prompts in the training config, ``dfl.prompts``; defaults "a photo restored by super-resolution", "... by
deblurring", "... by denoising", "... by dehazing", "... by deraining", "... by mixed restoration"). The
objective is the bidirectional contrastive loss with multi-positive soft targets (``losses.dfl_loss``).

The text tower is open_clip's (``fgresq_sdk.model.build_text_tower``) with open_clip's bundled BPE
tokenizer (offline), truncated to the config's ``text_cfg.context_length``. Without ``--pretrained`` it is
randomly initialised (seeded, so a resumed run rebuilds the same one) and frozen: the prompts then act as
fixed random class anchors. ``--pretrained PATH`` loads a local open_clip CLIP checkpoint into both image
towers and the text tower (see ``load_pretrained``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from fgresq_sdk.model import CHECKPOINT_FORMAT, build_text_tower, read_checkpoint_metadata, save_checkpoint

from .checkpoints import FINAL_NAME, load_weights_into
from .compiled import step_callable
from .config import TrainError
from .datasets import ImageCache, ImageTaskDataset, TransformSpec
from .loop import count_trainable, fit, image_batch, stage_optimization
from .losses import dfl_loss
from .manifest import TASKS
from .sampler import ShuffledBatchSampler

__all__ = ["task_prompts", "tokenize", "build_frozen_text_tower", "text_embeddings", "degradation_embed",
           "load_pretrained", "map_open_clip_state", "run_dfl", "validate_tasks"]

TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection",
             "text_pool", "cls_emb", "attn_mask")


def task_prompts(tcfg: dict) -> list[str]:
    """The prompts in TASKS order."""
    prompts = tcfg["dfl"]["prompts"]
    return [prompts[t] for t in TASKS]


def tokenize(prompts: list[str], context_length: int) -> torch.Tensor:
    """open_clip's SimpleTokenizer (bundled vocabulary, no download); truncates to context_length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=int(context_length))(prompts)


def build_frozen_text_tower(model_cfg: dict, seed: int = 0, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """The text tower, seeded random init (or `state`), frozen and in eval mode."""
    if "text_cfg" not in model_cfg:
        raise ValueError(f"model config {model_cfg.get('name')} has no text_cfg (needed for stage 1)")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tower = build_text_tower(model_cfg)
    if state:
        missing, unexpected = tower.load_state_dict(state, strict=False)
        missing = [k for k in missing if k != "attn_mask"]
        if missing or unexpected:
            raise ValueError(f"text tower weights do not fit (missing {missing[:5]}, unexpected {unexpected[:5]})")
    for p in tower.parameters():
        p.requires_grad_(False)
    return tower.eval()


@torch.no_grad()
def text_embeddings(text_tower: nn.Module, prompts: list[str], context_length: int) -> torch.Tensor:
    """[K, embed_dim] embeddings of the prompts (not normalised; dfl_loss normalises)."""
    return text_tower(tokenize(prompts, context_length)).float()


def degradation_embed(model, x: torch.Tensor) -> torch.Tensor:
    """Degradation-tower features in the joint CLIP space (through degradation_proj for ViT towers)."""
    f = model.degradation_tower(x)
    if model.degradation_proj is not None:
        f = f @ model.degradation_proj
    return f


# -- pretrained open_clip weights ----------------------------------------------------------------------
def map_open_clip_state(state: dict[str, torch.Tensor], has_split_proj: bool) -> dict[str, Any]:
    """Split an open_clip CLIP state dict into {"model": FGResQ keys, "text": text-tower keys, ...}.

    visual.X → image_tower.X and degradation_tower.X; visual.proj → degradation_proj when the model keeps
    the ViT projection apart (the image tower drops it); the text keys (token_embedding, positional_embedding,
    transformer.*, ln_final.*, text_projection) → the text tower; logit_scale is returned as its exp().
    """
    model_sd: dict[str, torch.Tensor] = {}
    text_sd: dict[str, torch.Tensor] = {}
    ignored: list[str] = []
    logit_scale = None
    for k, v in state.items():
        if k.startswith("visual."):
            rest = k[len("visual."):]
            if rest == "proj" and has_split_proj:
                model_sd["degradation_proj"] = v
            else:
                model_sd[f"image_tower.{rest}"] = v
                model_sd[f"degradation_tower.{rest}"] = v
        elif k == "logit_scale":
            logit_scale = float(v.float().exp())
        elif k.startswith(TEXT_KEYS):
            if k != "attn_mask":
                text_sd[k] = v
        else:
            ignored.append(k)
    return {"model": model_sd, "text": text_sd, "logit_scale": logit_scale, "ignored": ignored}


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    from open_clip.factory import load_state_dict

    return load_state_dict(str(path), device="cpu", weights_only=True)


def load_pretrained(model, path: str | Path) -> dict[str, Any]:
    """Load a local checkpoint into `model` in place: an open_clip CLIP checkpoint (state dict, .bin/.pt/
    .safetensors, OpenAI TorchScript archive), or one of our FGResQ checkpoints (all weights).

    Returns a report {"kind", "loaded", "ignored", "logit_scale", "text_state"}; text_state holds the text
    tower weights for stage 1 (None for our checkpoints).
    """
    path = Path(path)
    if not path.is_file():
        raise TrainError(f"pretrained weights {path}: not found")
    if path.suffix == ".safetensors":
        try:
            meta = read_checkpoint_metadata(path)
        except Exception:  # noqa: BLE001
            meta = {}
        if meta.get("format") == CHECKPOINT_FORMAT:
            load_weights_into(model, path)
            return {"kind": "fgresq", "path": str(path), "loaded": len(model.state_dict()), "ignored": [],
                    "logit_scale": None, "text_state": None}
    try:
        state = _read_state(path)
    except Exception as exc:  # noqa: BLE001
        raise TrainError(f"pretrained weights {path}: cannot read ({str(exc).splitlines()[0] if str(exc) else exc})") from None
    if not any(k.startswith("visual.") for k in state):
        raise TrainError(f"pretrained weights {path}: no 'visual.*' tensors (not an open_clip CLIP checkpoint)")
    mapped = map_open_clip_state(state, model.degradation_proj is not None)
    own = model.state_dict()
    bad = [k for k, v in mapped["model"].items() if k not in own or own[k].shape != v.shape]
    if bad:
        k = bad[0]
        got = tuple(mapped["model"][k].shape)
        want = tuple(own[k].shape) if k in own else "absent"
        raise TrainError(f"pretrained weights {path}: do not fit model config {model.cfg['name']} "
                         f"({k}: checkpoint {got} vs model {want}; {len(bad)} mismatches)")
    missing = [k for k in own if k.startswith(("image_tower.", "degradation_tower.")) and k not in mapped["model"]]
    if missing:
        raise TrainError(f"pretrained weights {path}: tower tensors missing ({missing[:5]})")
    model.load_state_dict(mapped["model"], strict=False)
    return {"kind": "open_clip", "path": str(path), "loaded": len(mapped["model"]), "ignored": mapped["ignored"],
            "logit_scale": mapped["logit_scale"], "text_state": mapped["text"] or None}


# -- the stage ----------------------------------------------------------------------------------------
@torch.no_grad()
def validate_tasks(model, text_feats: torch.Tensor, manifest, spec, cache=None, batch_size: int = 32,
                   channels_last: bool = False) -> dict:
    """Task-recognition accuracy of the degradation features (nearest prompt) on a manifest."""
    was = model.degradation_tower.training
    model.degradation_tower.eval()
    ds = ImageTaskDataset(manifest, spec, train=False, cache=cache)
    txt = torch.nn.functional.normalize(text_feats, dim=-1)
    hits = 0
    for s in range(0, len(ds), batch_size):
        items = [ds[i] for i in range(s, min(len(ds), s + batch_size))]
        x = image_batch(torch.stack([it["image"] for it in items]), txt.device, channels_last)
        f = torch.nn.functional.normalize(degradation_embed(model, x), dim=-1)
        pred = (f @ txt.t()).argmax(dim=1).cpu()
        hits += int((pred == torch.tensor([it["task"] for it in items])).sum())
    model.degradation_tower.train(was)
    return {"task_acc": hits / len(ds) if len(ds) else float("nan"), "n_images": len(ds)}


def run_dfl(model, train_m, tcfg: dict, stage_dir: Path, logger, *, val_m=None, resume: bool = False,
            progress=None, cache=None, text_state: dict[str, torch.Tensor] | None = None,
            pretrained_logit_scale: float | None = None, init: str = "", compile_steps: bool = False) -> Path:
    """Stage 1 on the images of a training manifest; returns the path of the stage's final model.
    compile_steps: full batches' degradation-tower calls through torch.compile (train/compiled.py)."""
    dc = tcfg["dfl"]
    seed = int(tcfg["seed"])
    # text_state / pretrained_logit_scale: from load_pretrained's report (the towers are already loaded).
    logit_scale = dc["logit_scale"] if dc["logit_scale"] is not None else pretrained_logit_scale
    logit_scale = float(logit_scale if logit_scale is not None else 100.0)
    device = next(model.parameters()).device
    text_tower = build_frozen_text_tower(model.cfg, seed=seed + 17, state=text_state)
    ctx = int(model.cfg["text_cfg"]["context_length"])
    text_feats = text_embeddings(text_tower, task_prompts(tcfg), ctx).to(device)
    del text_tower

    spec = TransformSpec.from_config(model.cfg, tcfg["data"])
    cache = cache if cache is not None else ImageCache(tcfg["data"]["cache_mb"])
    dataset = ImageTaskDataset(train_m, spec, train=True, seed=seed, cache=cache)
    if len(dataset) == 0:
        raise TrainError("stage dfl: the training manifest has no images")
    sampler = ShuffledBatchSampler(len(dataset), dc["batch_size"], seed=seed)
    if int(tcfg["data"]["num_workers"]) > 0:
        dataset.prefill()

    params = list(model.degradation_tower.parameters())
    if model.degradation_proj is not None:
        params.append(model.degradation_proj)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    epochs = int(dc["epochs"])
    total = epochs * len(sampler)
    optimizer, scheduler, start_epoch, step, resumed = stage_optimization(model, params, dc, total, stage_dir, resume)
    init = resumed or init

    def train_mode() -> None:
        model.eval()
        model.degradation_tower.train()

    present_only = bool(dc["present_only"])
    embed = step_callable(lambda x: degradation_embed(model, x), dc["batch_size"], compile_steps)

    def step_fn(batch: dict) -> dict[str, Any]:
        feats = embed(batch["image"])
        tasks = torch.as_tensor(batch["task"])
        loss = dfl_loss(feats, text_feats, tasks, logit_scale, present_only=present_only)
        with torch.no_grad():
            pred = (torch.nn.functional.normalize(feats, dim=-1)
                    @ torch.nn.functional.normalize(text_feats, dim=-1).t()).argmax(dim=1)
            acc = float((pred == tasks).float().mean())
        return {"loss": loss, "acc": acc}

    val_fn = None
    if val_m is not None:
        val_cache = ImageCache(tcfg["data"]["cache_mb"] / 4)
        channels_last = bool(tcfg["data"]["channels_last"])
        val_fn = lambda: validate_tasks(model, text_feats, val_m, spec, val_cache,  # noqa: E731
                                        channels_last=channels_last)
    logger.log("stage_start", stage="dfl", start_epoch=start_epoch, epochs=epochs, steps_per_epoch=len(sampler),
               total_steps=total, n_train=len(dataset), n_trainable_params=count_trainable(params),
               init=init, prompts=task_prompts(tcfg), logit_scale=logit_scale,
               text_tower="pretrained" if text_state else "random init (frozen)")
    fit(stage="dfl", model=model, optimizer=optimizer, scheduler=scheduler, sampler=sampler, dataset=dataset,
        step_fn=step_fn, train_mode=train_mode, epochs=epochs, stage_dir=stage_dir, logger=logger,
        start_epoch=start_epoch, global_step=step, log_every=int(tcfg["log_every"]), progress=progress,
        grad_clip=dc["grad_clip"], val_fn=val_fn, keep_checkpoints=tcfg["keep_checkpoints"],
        num_workers=int(tcfg["data"]["num_workers"]), train_config=tcfg)
    for p in model.parameters():
        p.requires_grad_(True)
    model.eval()
    final = save_checkpoint(model, stage_dir / FINAL_NAME, source="fgresq-sdk train (dfl, final)",
                            extra={"stage": "dfl", "epochs": str(epochs)})
    logger.log("stage_end", stage="dfl", model=str(final), epochs=epochs)
    return final
