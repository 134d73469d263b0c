"""Training objectives of FGResQ (paper, "Training Objectives" and "Degradation-aware Feature Learning").

* ``scene_fidelity_loss`` — the scene-aware fidelity loss (eqs. 6–7). Within each scene s of the batch and
  for every pair of items i < j: the target p_ij = 1 if MOS_i > MOS_j, 0.5 if equal, 0 otherwise; the
  prediction p̂_ij = Φ((ŝ_i − ŝ_j)/√2) (Thurstone case V with unit variances, Φ the standard normal CDF);
  the pair loss is the fidelity loss 1 − √(p·p̂) − √((1−p)(1−p̂)). L_s is the mean over the pairs of scene s
  and L_scene = Σ_s w_s·L_s with w_s ∝ 1/N_s (N_s = items of scene s in the batch), Σ_s w_s = 1 over the
  scenes that contribute at least one pair. Only orderings inside a scene matter, so MOS scales of
  different source datasets never meet.
* ``rank_loss`` — cross-entropy of the 3-way comparison logits against the pair labels
  (first → 0, second → 1, similar → 2: manifest.LABELS, the model's logit order).
* ``dfl_loss`` — the bidirectional contrastive loss of degradation-aware feature learning (eq. 4):
  ½[CE(s·I·Tᵀ, Y) + CE(s·T·Iᵀ, Yᵀ)] with L2-normalised image features I (one row per image) and text
  features T (one row per restoration-task prompt), Y[i, k] = 1 when image i is of task k. Several images
  of one batch share a task, so targets are soft: every row's positives share its mass equally. By default
  T is restricted to the tasks present in the batch (the in-batch CLIP formulation); ``present_only=False``
  keeps every task prompt as a negative for the image→text direction (text rows without a positive in the
  batch are always dropped from the text→image direction, as they have no target).
* ``stage2_loss`` — L = λ1·L_scene + λ2·L_rank (paper: λ1 = 5, λ2 = 1).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .manifest import LABELS

LABEL_INDEX = {label: i for i, label in enumerate(LABELS)}
FIDELITY_EPS = 1e-12  # inside the square roots: finite gradients, a 1e-6 bias at p in {0, 1}

__all__ = ["LABEL_INDEX", "FIDELITY_EPS", "normal_cdf", "fidelity", "pairwise_fidelity",
           "scene_fidelity_loss", "rank_loss", "label_tensor", "dfl_loss", "soft_cross_entropy",
           "stage2_loss"]


def normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x), the standard normal CDF."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def fidelity(p: torch.Tensor, p_hat: torch.Tensor, eps: float = FIDELITY_EPS) -> torch.Tensor:
    """Element-wise fidelity loss 1 − √(p·p̂) − √((1−p)(1−p̂)); eps inside the roots keeps gradients finite."""
    return 1.0 - torch.sqrt(p * p_hat + eps) - torch.sqrt((1.0 - p) * (1.0 - p_hat) + eps)


def _codes(values, device) -> torch.Tensor:
    """Integer codes for scene (or id) labels given as a tensor or a sequence of hashables."""
    if isinstance(values, torch.Tensor):
        return values.to(device=device).reshape(-1)
    lookup: dict = {}
    return torch.tensor([lookup.setdefault(v, len(lookup)) for v in values], dtype=torch.long, device=device)


def pairwise_fidelity(scores: torch.Tensor, mos: torch.Tensor, eps: float = FIDELITY_EPS):
    """Upper-triangle (i < j) targets, predictions and losses for one group of items."""
    n = scores.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=scores.device)
    diff_mos = mos[i] - mos[j]
    p = torch.where(diff_mos > 0, 1.0, torch.where(diff_mos < 0, 0.0, 0.5)).to(scores.dtype)
    p_hat = normal_cdf((scores[i] - scores[j]) / math.sqrt(2.0))
    return i, j, p, p_hat, fidelity(p, p_hat, eps)


def scene_fidelity_loss(scores: torch.Tensor, mos: torch.Tensor, scenes: Sequence | torch.Tensor,
                        ids: Sequence | torch.Tensor | None = None, eps: float = FIDELITY_EPS) -> torch.Tensor:
    """Scene-aware fidelity loss over every within-scene pair of the batch.

    scores: [N] predicted scores ŝ; mos: [N] ground-truth MOS; scenes: N scene labels (ints, strings or a
    tensor). ids (optional): N image identities; pairs of one image with itself (an image that occurs in
    several training pairs of a batch) are left out. Scenes with no pair contribute nothing and the
    1/N_s weights are normalised over the scenes that do. Returns a 0-dim tensor (0 with a graph when no
    pair exists, so callers can always backpropagate).
    """
    scores = scores.reshape(-1)
    mos = mos.reshape(-1).to(scores)
    if scores.shape != mos.shape:
        raise ValueError(f"{scores.shape[0]} scores vs {mos.shape[0]} MOS values")
    codes = _codes(scenes, scores.device)
    id_codes = None if ids is None else _codes(ids, scores.device)
    if codes.shape[0] != scores.shape[0] or (id_codes is not None and id_codes.shape[0] != scores.shape[0]):
        raise ValueError("scores, scenes and ids must have one entry per item")
    losses, weights = [], []
    for s in torch.unique(codes):
        idx = torch.nonzero(codes == s).reshape(-1)
        if idx.numel() < 2:
            continue
        i, j, _, _, ell = pairwise_fidelity(scores[idx], mos[idx], eps)
        if id_codes is not None:
            keep = id_codes[idx][i] != id_codes[idx][j]
            if not bool(keep.any()):
                continue
            ell = ell[keep]
        losses.append(ell.mean())
        weights.append(1.0 / idx.numel())
    if not losses:
        return scores.sum() * 0.0
    w = torch.tensor(weights, dtype=scores.dtype, device=scores.device)
    return (torch.stack(losses) * (w / w.sum())).sum()


def label_tensor(labels: Sequence[str] | torch.Tensor, device=None) -> torch.Tensor:
    """Pair labels (manifest.LABELS or their indices) as a long tensor."""
    if isinstance(labels, torch.Tensor):
        return labels.to(device=device, dtype=torch.long)
    return torch.tensor([LABEL_INDEX[x] if isinstance(x, str) else int(x) for x in labels],
                        dtype=torch.long, device=device)


def rank_loss(logits: torch.Tensor, labels: Sequence[str] | torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of [B, 3] comparison logits vs labels (first 0, second 1, similar 2)."""
    return F.cross_entropy(logits, label_tensor(labels, logits.device))


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −Σ_k y_k·log softmax(logits)_k (targets are rows summing to 1)."""
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def dfl_loss(image_feats: torch.Tensor, text_feats: torch.Tensor, task_ids: torch.Tensor,
             logit_scale: float | torch.Tensor, present_only: bool = True) -> torch.Tensor:
    """Bidirectional image↔task-prompt contrastive loss with multi-positive soft targets.

    image_feats: [B, D] image features (one row per image); text_feats: [K, D], row k the embedding of the
    prompt of task k; task_ids: [B] ints in [0, K). Both sides are L2-normalised here. logit_scale is the
    multiplier s (not its log).
    """
    task_ids = task_ids.reshape(-1).to(device=image_feats.device, dtype=torch.long)
    img = F.normalize(image_feats, dim=-1)
    txt = F.normalize(text_feats, dim=-1)
    k = txt.shape[0]
    y = F.one_hot(task_ids, k).to(img.dtype)  # [B, K]
    if present_only:
        present = torch.unique(task_ids)
        txt, y = txt[present], y[:, present]
    logits = logit_scale * img @ txt.t()  # [B, K']
    loss_i2t = soft_cross_entropy(logits, y / y.sum(dim=1, keepdim=True))
    yt = y.t()
    rows = yt.sum(dim=1) > 0
    loss_t2i = soft_cross_entropy(logits.t()[rows], yt[rows] / yt[rows].sum(dim=1, keepdim=True))
    return 0.5 * (loss_i2t + loss_t2i)


def stage2_loss(scores: torch.Tensor, mos: torch.Tensor, scenes, logits: torch.Tensor, labels,
                lambda_scene: float = 5.0, lambda_rank: float = 1.0, ids=None) -> dict[str, torch.Tensor]:
    """L = λ1·L_scene + λ2·L_rank; returns {"loss", "loss_scene", "loss_rank"}."""
    l_scene = scene_fidelity_loss(scores, mos, scenes, ids=ids)
    l_rank = rank_loss(logits, labels)
    return {"loss": lambda_scene * l_scene + lambda_rank * l_rank, "loss_scene": l_scene, "loss_rank": l_rank}
