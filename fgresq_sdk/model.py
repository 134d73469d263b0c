"""The one torch definition of FGResQ, shared by train/, export/ and the torch backend.

FGResQ (Fine-grained Image Quality Assessment for Perceptual Image Restoration) reads an image with two
CLIP image towers of the same shape: the image encoder (official name `clip_model`) and the degradation
encoder (`task_cls_clip`, trained first to recognise the restoration task). The degradation features
steer a learnable prompt into a quality-aware vector; a regression head scores one image and a 3-way
head compares two. Towers are open_clip's (ViT or ModifiedResNet) or our small conv-stats tower; any of them
fits behind the same prompt and heads.
"""
from __future__ import annotations

import datetime as _dt
import itertools
import json
import operator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .config import feature_dim, load_config
from .severity import CLASSICAL_NAMES, classical_statistics

CHECKPOINT_FORMAT = "fgresq-checkpoint-v1"


class ConvStatsTower(nn.Module):
    """A convolutional image tower for training from scratch on a few thousand images.

    Blur, noise, ringing and over-smoothing live in the finest pixels; a ViT's 16-px patch embedding and a
    ResNet stem see them only after a stride. Here every layer is a 3×3 convolution (the first at full
    resolution), and the image is summarised by the mean and the standard deviation of every channel over all
    positions: the statistics classical no-reference metrics pool, and ones that do not depend on where the
    content sits. A linear layer maps them to `width` (the feature the heads read); `proj` maps that into the
    joint space for stage 1, as a ViT tower's CLIP projection does.

    pool "log-stats" pools log σ instead of σ, and hidden > 0 puts one GELU layer of that width before the
    projection to `width`. Why: the heads are linear in the feature, and a linear function of σ cannot form the
    ratios (σ of fine detail over σ of coarse structure) that say how degraded an image is whatever its
    content and contrast; in logs a ratio is a difference.

    pool "log-stats-kurt" adds each channel's log kurtosis (fourth central moment over σ⁴). Why: sparse
    residue — rain streaks, block edges — moves a channel's mean and σ little when it covers a few percent of
    the pixels, but it makes the channel's distribution heavy-tailed; dense texture does not.

    pool "log-stats-ms" pools mean and log σ of every layer's output, not only the last one's. Why: the last
    layer's statistics mix fine residue with content; the ratio of a fine layer's energy to a coarse layer's
    (a difference in logs) is what natural-scene-statistics metrics read as content-free sharpness or noise,
    and the heads can form it only if both scales reach them.

    input_norm "mscn" feeds the first convolution the image and, beside it, its mean-subtracted contrast-normalised
    coefficients (MSCN: (x − μ)/(σ + c) per channel, μ and σ over a 7×7 Gaussian window; `LocalContrastNorm`).
    Why: the photo explains most of the score's variance across photos (README, "Candidate v22"); the statistics
    of raw responses scale with the content's contrast, while MSCN coefficients of natural images are close to
    unit Gaussian whatever the content, and blur, noise, blocks and streaks change their shape — the
    normalisation BRISQUE and NIQE read. The raw image stays, because haze and casts live in the global contrast
    the normalisation removes.

    nss_scales n > 0 appends BRISQUE-style statistics of the image's MSCN coefficients at n scales to the pooled
    statistics (`NaturalSceneStats`). Why: they are near content-free by construction, so they give the score an
    absolute sense (junk, quality across photos), while the convolutions keep reading the raw image.

    fine_stats_stride k > 1 reads the full-resolution layers' statistics (cumulative stride 1) on every k-th row
    and column. Why: those maps are the largest, and their per-channel mean and σ over ~50k positions are
    estimated as well from a quarter of them; the convolutions themselves still see every pixel. It cut the
    towers' forward + backward by ~12 % in isolation but did not measurably shorten a training step (README,
    "What changed from v19 to v20"): a smaller graph, not a faster recipe.
    """

    POOLS = ("stats", "log-stats", "log-stats-kurt", "log-stats-ms")
    INPUT_NORMS = ("none", "mscn")

    def __init__(self, channels: list[int], strides: list[int], width: int, embed_dim: int, pool: str = "stats",
                 hidden: int = 0, fine_stats_stride: int = 1, input_norm: str = "none", nss_scales: int = 0):
        super().__init__()
        if input_norm not in self.INPUT_NORMS:
            raise ValueError(f"conv-stats tower: unknown input_norm {input_norm!r} (expected one of {self.INPUT_NORMS})")
        self.input_norm = LocalContrastNorm(3) if input_norm == "mscn" else None
        if len(channels) != len(strides) or not channels:
            raise ValueError("conv-stats tower: 'channels' and 'strides' need one entry per layer")
        if pool not in self.POOLS:
            raise ValueError(f"conv-stats tower: unknown pool {pool!r} (expected one of {self.POOLS})")
        layers: list[nn.Module] = []
        c_in = 3 if self.input_norm is None else 6
        for c_out, stride in zip(channels, strides):
            layers += [nn.Conv2d(c_in, int(c_out), 3, stride=int(stride), padding=1), nn.GELU()]
            c_in = int(c_out)
        self.features = nn.Sequential(*layers)
        self.log_std = pool != "stats"
        self.kurtosis = pool == "log-stats-kurt"
        self.every_layer = pool == "log-stats-ms"
        fine_stats_stride = int(fine_stats_stride)
        if fine_stats_stride < 1 or (fine_stats_stride > 1 and not self.every_layer):
            raise ValueError("conv-stats tower: 'fine_stats_stride' must be >= 1, and > 1 only with pool 'log-stats-ms'")
        # per layer: the step of the view its statistics read (k only where the map is still full resolution)
        cumulative = itertools.accumulate((int(s) for s in strides), operator.mul)
        self.stats_steps = [fine_stats_stride if c == 1 else 1 for c in cumulative]
        n_in = 2 * sum(int(c) for c in channels) if self.every_layer else (3 if self.kurtosis else 2) * c_in
        self.nss = NaturalSceneStats(nss_scales) if nss_scales else None
        n_in += self.nss.n_features if self.nss is not None else 0
        self.pool_proj = (nn.Linear(n_in, width) if not hidden else
                          nn.Sequential(nn.Linear(n_in, int(hidden)), nn.GELU(), nn.Linear(int(hidden), width)))
        self.proj = nn.Parameter(torch.randn(width, embed_dim) * width ** -0.5)

    @staticmethod
    def _moments(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-channel mean, squared deviations and variance (+1e-6) over all positions."""
        mean = y.mean(dim=(2, 3))
        sq = (y - mean[:, :, None, None]).pow(2)
        return mean, sq, sq.mean(dim=(2, 3)) + 1e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nss = [] if self.nss is None else [self.nss(x)]
        if self.input_norm is not None:
            x = torch.cat([x, self.input_norm(x)], dim=1)
        if self.every_layer:
            stats = []
            for k, layer in enumerate(self.features):
                x = layer(x)
                if k % 2:  # after each GELU; one fused pass for mean and variance
                    step = self.stats_steps[k // 2]
                    var, mean = torch.var_mean(x if step == 1 else _every_kth(x, step), dim=(2, 3), correction=0)
                    stats += [mean, 0.5 * torch.log(var + 1e-6)]
        else:
            mean, sq, var = self._moments(self.features(x))
            log_var = torch.log(var)
            stats = [mean, 0.5 * log_var if self.log_std else torch.sqrt(var)]
            if self.kurtosis:  # log(m4 / var²): 0 for a symmetric two-point distribution, log 3 for a Gaussian
                stats.append(torch.log(sq.pow(2).mean(dim=(2, 3)) + 1e-12) - 2.0 * log_var)
        out = self.pool_proj(torch.cat(stats + nss, dim=1))
        return out if self.proj is None else out @ self.proj


class LocalContrastNorm(nn.Module):
    """Mean-subtracted contrast-normalised coefficients (x − μ)/(σ + c) of every channel, μ and σ the local mean and
    standard deviation under a 7×7 Gaussian window (σ_w = 7/6, BRISQUE's), reflect-padded so the map keeps its size.

    c = 0.04 is BRISQUE's C = 1 on a 0–255 scale expressed in the towers' input units (CLIP-normalised: ~1/255
    per grey level divided by a std of ~0.27, rounded up so flat frames' quantisation steps do not become unit
    noise). The window is a fixed, non-persistent buffer: it follows from the config, so checkpoints do not
    carry it and cannot disagree with it."""

    RADIUS = 3

    def __init__(self, channels: int, c: float = 0.04):
        super().__init__()
        t = torch.arange(-self.RADIUS, self.RADIUS + 1, dtype=torch.float32)
        g = torch.exp(-0.5 * (t / (7.0 / 6.0)) ** 2)
        g = g / g.sum()
        self.register_buffer("window", torch.outer(g, g).expand(channels, 1, -1, -1).contiguous(), persistent=False)
        self.channels, self.c = int(channels), float(c)

    def _local_mean(self, x: torch.Tensor) -> torch.Tensor:
        r = self.RADIUS
        return F.conv2d(F.pad(x, (r, r, r, r), mode="reflect"), self.window, groups=self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = self._local_mean(x)
        var = (self._local_mean(x * x) - mu * mu).clamp_min(0.0)
        return (x - mu) / (torch.sqrt(var + 1e-6) + self.c)


class NaturalSceneStats(nn.Module):
    """BRISQUE's features in closed form, with no parameters: at each scale (the image, then its 2×2 average
    pool), of the luma's MSCN coefficients' log σ and shape ratio (E|m|)²/E[m²] (2/π for a Gaussian,
    lower for the heavy tails of natural images: the moment that fixes a generalised Gaussian's shape), and for
    the products of each coefficient with its right, lower and two diagonal neighbours their mean over E[m²] (the
    neighbours' correlation) and the log root mean square of their negative and positive parts (the two sides of
    BRISQUE's asymmetric generalised Gaussian).

    Why: MSCN statistics of clean photos look alike whatever the content, and noise (uncorrelated neighbours),
    blur (correlation near 1), blocks and flat frames (collapsed σ) move them far from there — the absolute
    sense that pairs of one photo never teach. Fed only to the pooled feature, beside the learned statistics,
    they cannot change what the convolutions learn to see (input_norm "mscn" fed the coefficients to the first
    convolution, which then read deconvolution ringing as detail: README, "Candidate v23"). Tried as candidate
    v24 (README): the heads still learned to prefer ringing (test deblurring 0.844), so the lever needs a training
    signal that ranks over-sharpening as worse, not only a place away from the convolutions.

    Luma only (Rec. 601 weights on the normalised channels, whose standard deviations differ by under 6 %), as
    BRISQUE: per colour channel the statistics cost three times as much for a training step, and colour residue
    reaches the convolutions anyway."""

    SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
    LUMA = (0.299, 0.587, 0.114)
    EPS = 1e-4

    def __init__(self, scales: int):
        super().__init__()
        if scales < 1:
            raise ValueError("natural-scene statistics need at least one scale")
        self.mscn, self.scales = LocalContrastNorm(1), int(scales)
        self.register_buffer("luma", torch.tensor(self.LUMA).view(1, 3, 1, 1), persistent=False)
        self.n_features = self.scales * (2 + 3 * len(self.SHIFTS))

    @staticmethod
    def _pairs(m: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        """m times its neighbour dy rows down and dx columns across, over the positions where both exist."""
        h, w = m.shape[2], m.shape[3]
        a = m[:, :, : h - dy, max(0, -dx): w - max(0, dx)]
        b = m[:, :, dy:, max(0, dx): w + min(0, dx)]
        return a * b

    def _of_one_scale(self, x: torch.Tensor) -> list[torch.Tensor]:
        m = self.mscn(x)
        e2 = m.pow(2).mean(dim=(2, 3))
        out = [0.5 * torch.log(e2 + self.EPS), m.abs().mean(dim=(2, 3)).pow(2) / (e2 + self.EPS)]
        for dy, dx in self.SHIFTS:
            p = self._pairs(m, dy, dx)
            out += [p.mean(dim=(2, 3)) / (e2 + self.EPS),
                    0.5 * torch.log(p.clamp(max=0.0).pow(2).mean(dim=(2, 3)) + self.EPS),
                    0.5 * torch.log(p.clamp(min=0.0).pow(2).mean(dim=(2, 3)) + self.EPS)]
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats: list[torch.Tensor] = []
        x = (x * self.luma).sum(dim=1, keepdim=True)
        for k in range(self.scales):
            if k:
                x = F.avg_pool2d(x, 2)
            feats += self._of_one_scale(x)
        return torch.cat(feats, dim=1)


def _every_kth(y: torch.Tensor, k: int) -> torch.Tensor:
    """Every k-th row and column of an NCHW map. In an ONNX export it is written as a 1×1 max pool of stride k,
    which selects exactly the same values. Why: the strided slice exports as two Slice nodes with steps, which
    ONNX Runtime's CPU kernel walks element by element; in v20's encoder they took ~18 % of the kernel time, and
    with the pool the re-exported v20 ran 1.15-1.63× faster with bit-identical scores (README, "Embedded default
    model"). Torch keeps the slice, so training is unchanged."""
    if torch.onnx.is_in_onnx_export():
        return F.max_pool2d(y, kernel_size=1, stride=k)
    return y[:, :, ::k, ::k]


class LowLevelPrior(nn.Module):
    """A frozen, pretrained low-level reader whose linear readout is added to the score logit.

    Why: the towers, trained from scratch on a few hundred photos, order versions of one photo well but under-fit
    quality across photos (cross-content SRCC ~0.46 on val, and no higher on their own fit photos). Statistics of
    the first convolutions of an image-restoration network trained on many real photos carry that absolute sense:
    in probe v32 (docs/default-model-history.md) a ridge readout of them, fitted on fit photos, read 0.50 on val
    alone, and with the score and the naturalness distance 0.54 against 0.48. train/fit_prior.py loads the
    convolutions (waifu2x's upconv_7 photo model, MIT licence) and fits the readout after training; training
    steps never read it, and without `pair` (below) the comparison head (compare, rank) does not see it: only
    `score` moves.

    Config ``"prior": {"channels": [16, 32, 64, 128], "strides": [1, 2, 2, 2], "negative_slope": 0.1,
    "branches": 2, "experts": 6, "kurtosis": true}``: `branches` stacks of 3×3 convolutions without padding (each
    its own pretrained weights, the same shape), each convolution followed by a leaky ReLU, on the view in [0, 1]
    RGB (the model's normalisation undone); per layer the mean and log standard deviation of every channel. A
    strided layer's output is exactly the full convolution's at those positions; only the next layer then sees the
    subsampled map, which kept the probe's gain at a sixth of the cost. With one expert (the default) one linear
    unit reads the statistics; with E experts, E linear readouts are mixed by a softmax gate over the same
    statistics, r = Σ_e softmax(gate(s))_e · readout(s)_e. Why: a severity scale read one way for every
    restoration task mixes tasks whose statistics move in different directions; experts fitted per task and gated
    by a task classifier of the statistics read 0.55 on val against 0.50 for one readout on the same fit photos,
    and 0.61 fitted on every fit content (probe v33, docs/default-model-history.md).
    With ``"kurtosis": true`` each layer also gives every channel's log kurtosis, ln(E[(y − μ)⁴] + 1e-14) −
    2 ln(σ² + 1e-7) (floors ε² and ε, ε = 1e-7, so a constant channel reads exactly 0). Why: rain streaks, block
    edges and grain are sparse, heavy-tailed responses whose energy (σ) barely moves; on val the gated readout
    rose 0.607 → 0.629 and the fused score 0.614 → 0.631 (probe v34). Without the key a checkpoint reads as before.
    With ``"classical": true`` eight classical severity statistics of the view follow the convolutions' (noise σ,
    dark channel, blur effect, ...: fgresq_sdk/severity.py), read by the gate and the experts alike. Why: they
    measure noise, haze and blur directly, and on the shipped towers they lifted val cross-content SRCC 0.624 →
    0.640 and test 0.593 → 0.606, every task up on both (probe v36).
    Branch 0's convolutions are `convs[0:L]`, branch b's `convs[b·L:(b+1)·L]`, so a one-branch checkpoint keeps
    its names.
    With ``"pair": true`` the same statistics also give a pair term: a linear unit u(x) (`pair`) times a fixed
    direction v in feature space (`pair_direction`, size `feature_size`) is added to the quality features, so
    every comparison of a and b gains u(a) − u(b) on its "first better" logit and loses it on "second better",
    while the score head and the "similar" logit do not move (v solves W_first·v = (1, −1, 0), W_second·v =
    (−1, 1, 0), head·v = 0; train/pair_term.py). Why in the features: compare, rank, the C/C++ library, Triton
    and the remote client all read the comparison head from heads.npz on the encoder's features, so the term
    reaches every runtime without a new output or head. Why at all: a logistic regression of pair decisions on
    these statistics, fitted on fit photos, ranked the val pairs better than the trained towers' head (0.987 vs
    0.971 without hard negatives; probe v37, docs/default-model-history.md).
    With ``"junk_floor": true`` (needs "pair") the same unit also loses `slope` where ℓ(x), the score logit
    above, is below `threshold`: an image the score calls junk loses κ = 2·slope of margin in every comparison with
    an image above the threshold, while images on the same side of it compare as before (train/junk_floor.py).
    Why: the head and the pair term were fitted on versions of one photo, so `compare` and `rank` put a grey-noise
    PNG above a photo the score rated far higher; the floor hands such pairs to the score without touching the
    others. An option (fit_prior --junk-floor), not in the shipped recipe: its step cost test pair ACC and did not
    reach noise the score rates like a degraded version (docs/default-model-history.md, 2026-12-05 evening)."""

    def __init__(self, cfg: dict[str, Any], mean: list[float], std: list[float], feature_size: int = 0):
        super().__init__()
        channels, strides = [int(c) for c in cfg["channels"]], [int(s) for s in cfg["strides"]]
        if len(channels) != len(strides) or not channels:
            raise ValueError("prior: 'channels' and 'strides' need one entry per layer")
        branches, experts = int(cfg.get("branches", 1)), int(cfg.get("experts", 1))
        if branches < 1 or experts < 1:
            raise ValueError("prior: 'branches' and 'experts' must be at least 1")
        self.strides = strides
        self.branches = branches
        self.negative_slope = float(cfg.get("negative_slope", 0.1))
        self.kurtosis = bool(cfg.get("kurtosis", False))
        self.classical = bool(cfg.get("classical", False))
        convs = []
        for _ in range(branches):
            c_in = 3
            for c_out in channels:
                convs.append(nn.Conv2d(c_in, c_out, 3))
                c_in = c_out
        self.convs = nn.ModuleList(convs)
        n_stats = (3 if self.kurtosis else 2) * sum(channels) * branches
        n_stats += len(CLASSICAL_NAMES) if self.classical else 0
        self.readout = nn.Linear(n_stats, experts)
        self.gate = nn.Linear(n_stats, experts) if experts > 1 else None
        self.pair: nn.Linear | None = None
        self.pair_direction: nn.Parameter | None = None
        if cfg.get("pair"):
            if feature_size < 1:
                raise ValueError("prior: 'pair' needs the model's feature size")
            self.pair = nn.Linear(n_stats, 1)
            self.pair_direction = nn.Parameter(torch.zeros(feature_size))
        self.junk_threshold: nn.Parameter | None = None
        self.junk_slope: nn.Parameter | None = None
        if cfg.get("junk_floor"):
            if self.pair is None:
                raise ValueError("prior: 'junk_floor' moves the features along the pair term's direction: "
                                 "it needs 'pair'")
            # slope 0: no floor until train/junk_floor.py fits one
            self.junk_threshold = nn.Parameter(torch.zeros(1))
            self.junk_slope = nn.Parameter(torch.zeros(1))
        for prm in self.parameters():
            prm.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1), persistent=False)

    def statistics(self, x: torch.Tensor) -> torch.Tensor:
        """Per layer and channel, over all positions of the normalised view x: mean, log σ (σ² + 1e-8) and, with
        `kurtosis`, log kurtosis; then, with `classical`, the view's eight classical statistics."""
        rgb = x * self.std + self.mean
        stats, n = [], len(self.strides)
        for b in range(self.branches):
            y = rgb
            for conv, stride in zip(self.convs[b * n:(b + 1) * n], self.strides):
                y = F.leaky_relu(F.conv2d(y, conv.weight, conv.bias, stride=stride), self.negative_slope)
                # two passes, written out: torch.var_mean exports as E[y²] − E[y]², whose float32 cancellation
                # leaves ~1e-7·y² of variance in a constant channel, which the kurtosis would divide by
                mean = y.mean(dim=(2, 3), keepdim=True)
                c2 = (y - mean) ** 2
                var = c2.mean(dim=(2, 3))
                log_var = torch.log(var + 1e-8)
                stats += [mean.flatten(1), 0.5 * log_var]
                if self.kurtosis:
                    stats.append(torch.log((c2 * c2).mean(dim=(2, 3)) + 1e-7 ** 2) - 2 * torch.log(var + 1e-7))
        if self.classical:
            stats.append(classical_statistics(rgb))
        return torch.cat(stats, dim=1)

    def junk_shift(self, logit: torch.Tensor) -> torch.Tensor | None:
        """With "junk_floor": −slope where the score logit is below the threshold, else 0, [N, 1]: the pair term's
        unit moves by a step, not by the distance, so two images that are both below it compare as before (None
        without the floor). Two parameters of their own, each an input of its own node, so the exported graph
        keeps them under their names (export/read_back.py)."""
        if self.junk_threshold is None:
            return None
        return -(self.junk_slope * (logit < self.junk_threshold).to(logit.dtype))

    def _score_term(self, s: torch.Tensor) -> torch.Tensor:
        if self.gate is None:
            return self.readout(s)
        return (F.softmax(self.gate(s), dim=1) * self.readout(s)).sum(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor, with_shift: bool = False):
        """The term added to the score logit, [N, 1]; with `with_shift`, (that term, the features' shift [N, F] or
        None without a pair term) from one pass over the statistics. One entry point, called as the module: the
        exported graph names its nodes `/prior/...` by that call, and export/half.py keeps them fp32 by the name."""
        term, unit = self.read(self.statistics(x))
        if not with_shift:
            return term
        return term, (None if unit is None else unit * self.pair_direction)

    def read(self, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the score term [N, 1], the pair term's unit u [N, 1] or None) from statistics already computed: what
        the fitting steps (train/fit_prior.py, train/junk_floor.py) read the images through, without reading them
        again."""
        return self._score_term(s), (None if self.pair is None else self.pair(s))


def build_image_tower(cfg: dict[str, Any]) -> nn.Module:
    """The image tower the config names: our conv-stats tower, or an open_clip tower (ViT or ModifiedResNet);
    its forward returns the pooled feature the heads read."""
    vc = dict(cfg["vision_cfg"])
    if vc.get("kind") == "conv-stats":
        return ConvStatsTower(vc["channels"], vc["strides"], int(vc["width"]), int(cfg["embed_dim"]),
                              pool=vc.get("pool", "stats"), hidden=int(vc.get("hidden", 0)),
                              fine_stats_stride=int(vc.get("fine_stats_stride", 1)),
                              input_norm=vc.get("input_norm", "none"), nss_scales=int(vc.get("nss_scales", 0)))
    from open_clip.model import _build_vision_tower

    return _build_vision_tower(cfg["embed_dim"], vc, quick_gelu=cfg.get("quick_gelu", False))


def build_text_tower(cfg: dict[str, Any]) -> nn.Module:
    """open_clip's text tower; only degradation-aware feature learning (training stage 1) uses it."""
    from open_clip.model import _build_text_tower

    return _build_text_tower(cfg["embed_dim"], dict(cfg["text_cfg"]), quick_gelu=cfg.get("quick_gelu", False))


class FGResQ(nn.Module):
    """Two image towers + degradation-aware prompt + regression and comparison heads."""

    def __init__(self, cfg: dict[str, Any] | str):
        super().__init__()
        self.cfg = load_config(cfg)
        dim = feature_dim(self.cfg)
        self.feature_dim = dim
        self.image_tower = build_image_tower(self.cfg)
        self.degradation_tower = build_image_tower(self.cfg)
        # The heads read the class token before CLIP's projection, so the image tower's projection is dropped;
        # the degradation tower keeps its projection apart because stage 1 aligns projected features with text.
        self.degradation_proj: nn.Parameter | None = None
        if getattr(self.image_tower, "proj", None) is not None:
            self.image_tower.proj = None
            self.degradation_proj = self.degradation_tower.proj
            self.degradation_tower.proj = None
        self.task_mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.prompt = nn.Parameter(torch.randn(1, dim) * 0.02)
        self.prompt_mlp = nn.Linear(dim, dim)
        self.head = nn.Linear(3 * dim, 1)
        self.compare_head = nn.Linear(6 * dim, 3)
        # score = sigmoid(k · head(q)). The authors' current release uses k = 0.3 (added 2025-11-19);
        # our own configs use k = 1 unless they say otherwise. Part of the exported score output.
        self.score_scale = float(self.cfg.get("score_scale", 1.0))
        # A config with "prior" adds a frozen low-level reader to the score logit (LowLevelPrior); None otherwise,
        # and then no node of it is in the graph.
        self.prior: LowLevelPrior | None = None
        if self.cfg.get("prior"):
            pre = self.cfg["preprocess"]
            self.prior = LowLevelPrior(self.cfg["prior"], pre["mean"], pre["std"], feature_size=3 * dim)

    # -- the forward pieces ------------------------------------------------------------------------------
    def degradation_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.degradation_tower(x)

    def quality_features(self, x: torch.Tensor) -> torch.Tensor:
        """q = [f, t, f + t] with t = prompt_mlp(softmax(task_mlp(d)) · prompt).

        A config with "mirror_views": true averages q over each image and its mirror image in eval mode, so
        every runtime that executes the model (torch backend, exported graph, C++) answers the same; the
        score follows from the averaged q, and the comparison head, linear in q, averages its logits.
        Training steps (train mode) see single views."""
        if self.cfg.get("mirror_views") and not self.training:
            q = self._single_view_features(torch.cat([x, x.flip(-1)]))
            return q.reshape(2, -1, q.shape[-1]).mean(0)
        return self._single_view_features(x)

    def _single_view_features(self, x: torch.Tensor) -> torch.Tensor:
        f = self.image_tower(x)
        d = self.degradation_tower(x)
        t = self.prompt_mlp(F.softmax(self.task_mlp(d), dim=1) * self.prompt)
        return torch.cat([f, t, f + t], dim=1)

    def score_logit(self, q: torch.Tensor) -> torch.Tensor:
        """k · head(q), the score before its sigmoid ([N, 1])."""
        logit = self.head(q)
        if self.score_scale != 1.0:  # k = 1 adds no node to the graph (bundles written before k stay identical)
            logit = logit * self.score_scale
        return logit

    def score_from_features(self, q: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.score_logit(q)).squeeze(-1)

    def compare_logits(self, q0: torch.Tensor, q1: torch.Tensor) -> torch.Tensor:
        """Logits of (first better, second better, similar quality)."""
        return self.compare_head(torch.cat([q0, q1], dim=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(q, score). The score adds the prior's term to the head's logit where the config has one (read on the
        view itself, not its mirror: the term is fitted that way and costs one pass)."""
        q = self.quality_features(x)
        if self.prior is None:
            return q, self.score_from_features(q)
        term, shift = self.prior(x, with_shift=True)
        logit = self.score_logit(q) + term
        score = torch.sigmoid(logit).squeeze(-1)
        # the pair term moves the features along a direction the score head does not read: the score above is
        # computed before it, so a model with the term scores exactly as without it
        floor = self.prior.junk_shift(logit)
        if floor is not None:  # the junk floor moves them along the same direction, by the score it leaves alone
            shift = shift + floor * self.prior.pair_direction
        return (q if shift is None else q + shift), score


# -- checkpoints (safetensors + JSON config in its metadata) -----------------------------------------------
def save_checkpoint(model: FGResQ, path: str | Path, source: str, extra: dict[str, str] | None = None) -> Path:
    """Write our checkpoint: safetensors weights, the full JSON config and provenance in the header."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "config": json.dumps(model.cfg, sort_keys=True),
        "config_name": model.cfg["name"],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": source,
    }
    meta.update(extra or {})
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def read_checkpoint_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def checkpoint_metadata_from_bytes(data: bytes) -> dict[str, str]:
    """The safetensors header's __metadata__ (8-byte little-endian length, then JSON)."""
    if len(data) < 8:
        raise ValueError("file too short for a safetensors header")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise ValueError("header length out of range")
    header = json.loads(data[8:8 + n].decode("utf-8"))
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(meta) if isinstance(meta, dict) else {}


def load_checkpoint(source: str | Path | bytes, map_location: str = "cpu", name: str | None = None) -> FGResQ:
    """Build the model from one of our safetensors checkpoints (no pickle involved).

    source: a path, or the file's bytes as already read and verified by `Bundle.read` (then `name` is the
    path used in messages), so a bundle's checkpoint is read once.
    """
    from safetensors.torch import load as load_bytes

    from .errors import BundleError

    if isinstance(source, (bytes, bytearray)):
        data, where = bytes(source), name or "<checkpoint>"
    else:
        path = Path(source)
        where = str(path)
        if not path.is_file():
            raise BundleError(f"{path}: checkpoint not found")
        data = path.read_bytes()
    try:
        meta = checkpoint_metadata_from_bytes(data)
    except Exception as exc:  # noqa: BLE001 - any header failure means "not our checkpoint"
        raise BundleError(f"{where}: not a safetensors checkpoint ({exc})") from None
    if meta.get("format") != CHECKPOINT_FORMAT or "config" not in meta:
        raise BundleError(f"{where}: not an FGResQ checkpoint (metadata format={meta.get('format')!r})")
    model = FGResQ(json.loads(meta["config"]))
    try:
        state = load_bytes(data)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise BundleError(f"{where}: not a readable safetensors checkpoint ({exc})") from None
    state = {k: v.to(map_location) for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BundleError(f"{where}: weights do not match config {model.cfg['name']} "
                          f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})")
    return model.eval()
