"""Eight classical severity statistics of an image, in torch so that they export inside the encoder graph.

Why: the low-level prior's waifu2x statistics describe texture, and its task gate reads them to tell restoration
tasks apart; some severities are measured far more directly by decades-old hand-made estimators (noise level,
haze veil, blur), and beside the waifu2x statistics they lifted the prior's cross-content SRCC on every task, val
and test alike (probe v36, docs/default-model-history.md). Every statistic is a convolution, pool, slice, log or
mean: ONNX Runtime and the torch model compute the same graph.

Input: RGB in [0, 1], NCHW, at least 16 pixels on a side. Output: [N, 8], in the order of `CLASSICAL_NAMES`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CLASSICAL_NAMES = ("log_noise_sigma", "dark_channel", "log_fine_coarse_laplacian", "log_mean_gradient",
                   "log_luma_std", "saturation", "gradient_anisotropy", "blur_effect")
EPS = 1e-6
LUMA = (0.299, 0.587, 0.114)
# Immerkær's noise kernel: the difference of two Laplacians, blind to image structure up to second order
_IMMERKAER = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))
_LAPLACIAN = ((0.0, 1.0, 0.0), (1.0, -4.0, 1.0), (0.0, 1.0, 0.0))
DARK_WINDOW = 15  # He et al.'s dark channel patch
BLUR_TAPS = 9  # Crété-Roffet's re-blur


def _kernel(rows, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device).reshape(1, 1, len(rows), len(rows[0]))


def _mean(y: torch.Tensor) -> torch.Tensor:
    return y.mean(dim=(1, 2, 3))


def noise_sigma(luma: torch.Tensor) -> torch.Tensor:
    """Immerkær (1996), fast noise variance estimation: σ = sqrt(π/2) / 6 · mean |luma ∗ M| (valid positions)."""
    return math.sqrt(math.pi / 2) / 6 * _mean(F.conv2d(luma, _kernel(_IMMERKAER, luma)).abs())


def dark_channel(rgb: torch.Tensor) -> torch.Tensor:
    """He et al.'s dark channel, [N, 1, H, W]: the minimum over colours, then over a 15×15 window (clipped at
    the borders).

    The window's minimum is taken in two passes, 15×1 then 1×15, in eager torch: the same values exactly (the
    minimum over a square is the minimum over its columns of the minima over its rows, borders included), and
    torch's 2-D max pool scans all 225 taps where two 1-D pools scan 30: ~3× faster, a quarter of the recipe's
    prior step (train/fit_prior.py). An ONNX export keeps the one 15×15 MaxPool: ONNX Runtime's kernel is
    already fast, and the exported encoder stays byte for byte the one the shipped default was built with."""
    neg = -rgb.amin(dim=1, keepdim=True)
    half = DARK_WINDOW // 2
    if torch.onnx.is_in_onnx_export():
        return -F.max_pool2d(neg, DARK_WINDOW, stride=1, padding=half)
    rows = F.max_pool2d(neg, (DARK_WINDOW, 1), stride=1, padding=(half, 0))
    return -F.max_pool2d(rows, (1, DARK_WINDOW), stride=1, padding=(0, half))


def dark_channel_mean(rgb: torch.Tensor) -> torch.Tensor:
    """The dark channel averaged over the view: haze lifts it."""
    return _mean(dark_channel(rgb))


def fine_coarse_laplacian(luma: torch.Tensor) -> torch.Tensor:
    """log of the Laplacian energy at full resolution over that at half resolution: noise and grain raise it,
    blur lowers it."""
    lap = _kernel(_LAPLACIAN, luma)
    fine = _mean(F.conv2d(luma, lap) ** 2)
    coarse = _mean(F.conv2d(F.avg_pool2d(luma, 2), lap) ** 2)
    return torch.log(fine + EPS) - torch.log(coarse + EPS)


def _differences(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return y[:, :, :, 1:] - y[:, :, :, :-1], y[:, :, 1:, :] - y[:, :, :-1, :]


def blur_effect(luma: torch.Tensor, gradients: "tuple[torch.Tensor, torch.Tensor] | None" = None) -> torch.Tensor:
    """Crété-Roffet et al. (2007): a 9-tap box re-blur removes little of the variation between neighbours of an
    image that is already blurred; per axis 1 − Σ max(0, |∇I| − |∇B|) / Σ |∇I|, the larger of the two
    (1: flat or fully blurred, near 0: sharp). `gradients`: luma's `_differences`, where the caller has them."""
    box = BLUR_TAPS // 2
    gradients = gradients or _differences(luma)
    out = []
    for axis, (pad, shape) in enumerate((((box, box, 0, 0), (1, BLUR_TAPS)), ((0, 0, box, box), (BLUR_TAPS, 1)))):
        weight = torch.full((1, 1) + shape, 1.0 / BLUR_TAPS, dtype=luma.dtype, device=luma.device)
        blurred = F.conv2d(F.pad(luma, pad, mode="replicate"), weight)
        d_img, d_blur = gradients[axis].abs(), _differences(blurred)[axis].abs()
        out.append(1 - _mean(F.relu(d_img - d_blur)) / (_mean(d_img) + EPS))
    return torch.maximum(out[0], out[1])


def classical_statistics(rgb: torch.Tensor) -> torch.Tensor:
    """[N, 8]: the statistics of `CLASSICAL_NAMES` of RGB views in [0, 1]."""
    r, g, b = rgb[:, 0:1], rgb[:, 1:2], rgb[:, 2:3]
    luma = LUMA[0] * r + LUMA[1] * g + LUMA[2] * b
    gx, gy = _differences(luma)
    ex, ey = _mean(gx * gx), _mean(gy * gy)
    centred = luma - luma.mean(dim=(2, 3), keepdim=True)
    hi, lo = rgb.amax(dim=1, keepdim=True), rgb.amin(dim=1, keepdim=True)
    stats = [torch.log(noise_sigma(luma) + EPS),
             dark_channel_mean(rgb),
             fine_coarse_laplacian(luma),
             torch.log(_mean(gx.abs()) + _mean(gy.abs()) + EPS),
             0.5 * torch.log(_mean(centred * centred) + EPS * EPS),
             _mean((hi - lo) / (hi + EPS)),
             (torch.log(ex + EPS) - torch.log(ey + EPS)).abs(),
             blur_effect(luma, (gx, gy))]
    return torch.stack(stats, dim=1)
