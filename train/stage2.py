"""Stage 2: dual-branch quality prediction.

Stage 1 (``dfl.py``) has aligned the degradation tower with the task prompts; stage 2 freezes that tower
(eval mode) and trains the image tower, prompt, task/prompt MLPs, regression head and comparison head with

    L = λ1·L_scene + λ2·L_rank          (paper: λ1 = 5, λ2 = 1)

on scene-aware batches of pairs: each step takes pairs of one scene, scores both images of every pair
(``score_from_features``), applies the scene-aware fidelity loss over all images of the batch (their MOS)
and the cross-entropy ranking loss over the pairs (``compare_logits``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from fgresq_sdk.model import save_checkpoint

from . import metrics as M
from .by_implementation import implementation_accuracy
from .checkpoints import FINAL_NAME
from .compiled import step_callable
from .config import TrainError
from .datasets import ImageCache, PairDataset, TransformSpec, view_batches
from .ema import WeightEMA
from .evaluate import scene_weighted_correlations
from .logs import JsonlLogger, Progress
from .losses import stage2_loss
from .loop import count_trainable, fit, image_batch, stage_optimization
from .sampler import SceneBatchSampler, ShuffledBatchSampler

__all__ = ["freeze_for_stage2", "stage2_step", "manifest_features", "validate_pairs", "run_fgresq"]


def freeze_for_stage2(model: nn.Module, train_image_tower: bool = True, degradation_trainable_blocks: int = 0):
    """requires_grad as stage 2 wants it; returns a function that sets train/eval modes for a step."""
    for p in model.parameters():
        p.requires_grad_(True)
    for p in model.degradation_tower.parameters():
        p.requires_grad_(False)
    if model.degradation_proj is not None:
        model.degradation_proj.requires_grad_(False)  # only stage 1 reads it
    if not train_image_tower:
        for p in model.image_tower.parameters():
            p.requires_grad_(False)
    unfrozen = []
    if degradation_trainable_blocks:
        blocks = getattr(getattr(model.degradation_tower, "transformer", None), "resblocks", None)
        if blocks is None:
            raise TrainError("degradation_trainable_blocks needs a ViT degradation tower")
        unfrozen = list(blocks[-int(degradation_trainable_blocks):])
        for mod in unfrozen + [model.degradation_tower.ln_post]:
            for p in mod.parameters():
                p.requires_grad_(True)

    def train_mode() -> None:
        model.train()
        model.degradation_tower.eval()
        for b in unfrozen:
            b.train()
        if not train_image_tower:
            model.image_tower.eval()

    return train_mode


def stage2_step(model, batch: dict, lambda_scene: float = 5.0, lambda_rank: float = 1.0,
                fidelity_on: str = "score", fidelity_groups: str = "scene",
                features: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, Any]:
    """One stage-2 forward: scores of both images of every pair, fidelity over all images, CE over pairs.

    fidelity_on "logit": the fidelity loss sees the score head's logit instead of its sigmoid;
    fidelity_groups "content": it compares images of one content (and scene) only; "pooled": every two images
    of the batch, on MOS mapped to [0, 1] by each scene's declared range (config.py). features: what computes q
    (default model.quality_features; run_fgresq passes its compiled form with --compile)."""
    n = batch["a"].shape[0]
    q = (features or model.quality_features)(torch.cat([batch["a"], batch["b"]]))
    scores = model.head(q).squeeze(-1) if fidelity_on == "logit" else model.score_from_features(q)
    logits = model.compare_logits(q[:n], q[n:])
    scenes = torch.as_tensor(batch["scene"])
    groups, mos = scenes, torch.cat([batch["mos_a"], batch["mos_b"]])
    if fidelity_groups == "content":  # one code per (scene, content); a pair's two images share both
        groups = scenes * (int(torch.as_tensor(batch["content"]).max()) + 1) + torch.as_tensor(batch["content"])
    elif fidelity_groups == "pooled":  # one group; the unit scale makes MOS of different scenes comparable
        groups, mos = torch.zeros_like(scenes), torch.cat([batch["unit_a"], batch["unit_b"]])
    out = stage2_loss(scores, mos, torch.cat([groups, groups]),
                      logits, torch.as_tensor(batch["label"]), lambda_scene, lambda_rank,
                      ids=torch.cat([torch.as_tensor(batch["id_a"]), torch.as_tensor(batch["id_b"])]))
    out["pairs"] = int(n)
    out["scene"] = -1 if fidelity_groups == "pooled" else int(scenes[0])  # a pooled batch has no one scene
    return out


@torch.no_grad()
def manifest_features(model, manifest, spec, cache=None, batch_size: int = 32,
                      channels_last: bool = False) -> tuple[list[str], torch.Tensor]:
    """Quality features q of every manifest image (sorted ids) through the eval transform, i.e. exactly what
    inference feeds the model; the caller puts the model in eval mode."""
    ids = sorted(manifest.images)
    device = next(model.parameters()).device
    qs = [model.quality_features(image_batch(x, device, channels_last))
          for x in view_batches(manifest, ids, spec, cache, batch_size)]
    return ids, (torch.cat(qs) if qs else torch.zeros(0, device=device))


@torch.no_grad()
def validate_pairs(model, manifest, spec, cache=None, batch_size: int = 32,
                   channels_last: bool = False) -> dict[str, Any]:
    """Val metrics with the live torch model and the eval transform (= inference preprocessing).

    Metrics come from train/metrics.py and train/evaluate.py (scene-weighted SRCC/PLCC, the paper's
    symmetrised pair ACC, 3-way ACC).
    """
    was_training = model.training
    model.eval()
    ids, q = manifest_features(model, manifest, spec, cache, batch_size, channels_last)
    device = q.device
    scores = model.score_from_features(q).float().cpu().numpy() if len(ids) else np.zeros(0)
    recs = [manifest.images[k] for k in ids]
    corr = scene_weighted_correlations(scores, [r.mos for r in recs], [r.scene for r in recs])
    out: dict[str, Any] = {"srcc": corr["srcc"], "plcc": corr["plcc"], "n_images": len(ids),
                           "n_pairs": len(manifest.pairs)}
    if manifest.pairs:
        pos = {k: i for i, k in enumerate(ids)}
        ia = torch.tensor([pos[p.a] for p in manifest.pairs])
        ib = torch.tensor([pos[p.b] for p in manifest.pairs])
        ia, ib = ia.to(device), ib.to(device)
        p_ab = torch.softmax(model.compare_logits(q[ia], q[ib]), dim=1).float().cpu().numpy()
        p_ba = torch.softmax(model.compare_logits(q[ib], q[ia]), dim=1).float().cpu().numpy()
        pref, three = M.symmetrised_pair_probs(p_ab, p_ba)
        labels = [p.label for p in manifest.pairs]
        out["acc"] = M.pair_accuracy(pref, labels)
        out["acc3"] = M.three_way_accuracy(three, labels)
        out.update(_acc_breakdown(manifest, pref, labels))
    model.train(was_training)
    return out


def _acc_breakdown(manifest, pref: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """Pair ACC of the val pairs per task and, for synthetic manifests, per generator implementation
    (`by_implementation.py`). Why in the training log: the pooled ACC that selects epochs can rise while one
    task or one artefact falls — candidate v23 read 0.962 on the val photos against v20's 0.947 while its
    deconvolution ringing read 0.735 against 0.940 (README), visible then only in a separate `eval`."""
    by_task: dict[str, list[int]] = {}
    for k, p in enumerate(manifest.pairs):
        by_task.setdefault(manifest.images[p.a].task, []).append(k)
    out: dict[str, Any] = {"acc_by_task": {t: M.pair_accuracy(pref[ks], [labels[k] for k in ks])
                                           for t, ks in sorted(by_task.items())}}
    impl = implementation_accuracy(manifest, manifest.pairs, pref, {}, model_name="acc")
    if impl:
        out["acc_by_implementation"] = {t: {name: row["acc"] for name, row in rows.items()} for t, rows in impl.items()}
    return out


def run_fgresq(model, train_m, tcfg: dict, stage_dir: Path, logger: JsonlLogger, *, val_m=None,
               resume: bool = False, progress: Progress | None = None, cache=None, init: str = "",
               compile_steps: bool = False) -> Path:
    """Stage 2 on a training manifest; returns the path of the stage's final model.
    compile_steps: full batches' quality_features through torch.compile (train/compiled.py)."""
    sc = tcfg["fgresq"]
    seed = int(tcfg["seed"])
    spec = TransformSpec.from_config(model.cfg, tcfg["data"])
    cache = cache if cache is not None else ImageCache(tcfg["data"]["cache_mb"])
    dataset = PairDataset(train_m, spec, train=True, seed=seed, cache=cache)
    if len(dataset) == 0:
        raise TrainError("stage fgresq: the training manifest has no pairs")
    # "pooled" fidelity compares across scenes, so its batches mix them; otherwise the paper's one-scene batches
    sampler = (ShuffledBatchSampler(len(dataset), sc["batch_size"], seed=seed) if sc["fidelity_groups"] == "pooled"
               else SceneBatchSampler(dataset.pair_scenes, sc["batch_size"], seed=seed))
    if int(tcfg["data"]["num_workers"]) > 0:
        dataset.prefill()
    train_mode = freeze_for_stage2(model, sc["train_image_tower"], sc["degradation_trainable_blocks"])
    epochs = int(sc["epochs"])
    total = epochs * len(sampler)
    ema = WeightEMA(model, sc["ema_decay"]) if sc["ema_decay"] else None
    optimizer, scheduler, start_epoch, step, resumed = stage_optimization(
        model, model.parameters(), sc, total, stage_dir, resume, ema=ema)
    init = resumed or init
    val_eval_cache = ImageCache(tcfg["data"]["cache_mb"] / 4) if val_m is not None else None
    channels_last = bool(tcfg["data"]["channels_last"])
    val_fn = ((lambda: validate_pairs(model, val_m, spec, val_eval_cache, channels_last=channels_last))
              if val_m is not None else None)
    logger.log("stage_start", stage="fgresq", start_epoch=start_epoch, epochs=epochs, ema_decay=sc["ema_decay"],
               steps_per_epoch=len(sampler), total_steps=total, n_train=len(dataset),
               n_trainable_params=count_trainable(model.parameters()), init=init)
    lam1, lam2 = float(sc["lambda_scene"]), float(sc["lambda_rank"])
    fidelity = {"fidelity_on": sc["fidelity_on"], "fidelity_groups": sc["fidelity_groups"]}
    scene_names = {v: k for k, v in dataset.scene_index.items()}
    features = step_callable(model.quality_features, 2 * int(sc["batch_size"]), compile_steps)  # a and b of each pair

    def step_fn(batch: dict) -> dict[str, Any]:
        out = stage2_step(model, batch, lam1, lam2, features=features, **fidelity)
        out["scene"] = scene_names.get(out["scene"], "pooled")
        return out

    fit(stage="fgresq", model=model, optimizer=optimizer, scheduler=scheduler, sampler=sampler, dataset=dataset,
        step_fn=step_fn, train_mode=train_mode, epochs=epochs,
        stage_dir=stage_dir, logger=logger, start_epoch=start_epoch, global_step=step,
        log_every=int(tcfg["log_every"]), progress=progress, grad_clip=sc["grad_clip"], val_fn=val_fn,
        keep_checkpoints=tcfg["keep_checkpoints"], num_workers=int(tcfg["data"]["num_workers"]),
        train_config=tcfg, ema=ema)
    if ema is not None:
        model.load_state_dict(ema.shadow)
    model.eval()
    final = save_checkpoint(model, stage_dir / FINAL_NAME, source="fgresq-sdk train (fgresq, final)",
                            extra={"stage": "fgresq", "epochs": str(epochs)})
    logger.log("stage_end", stage="fgresq", model=str(final), epochs=epochs)
    return final
