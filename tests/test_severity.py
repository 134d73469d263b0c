"""fgresq_sdk/severity.py: each classical statistic measures what its name says on images whose answer is known,
and moves the right way with the degradation it is meant for."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import needs_torch, photo


def _view(name: str = "astronaut"):
    import torch

    arr = photo(name)[64:288, 96:320].astype(np.float32) / 255
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def _stats(x):
    import torch

    from fgresq_sdk.severity import CLASSICAL_NAMES, classical_statistics

    with torch.no_grad():
        s = classical_statistics(x)
    assert s.shape == (len(x), len(CLASSICAL_NAMES)) and torch.isfinite(s).all()
    return {name: s[:, k].double().numpy() for k, name in enumerate(CLASSICAL_NAMES)}


@needs_torch
@pytest.mark.parametrize("sigma", [0.01, 0.03, 0.1])
def test_immerkaer_noise_sigma_reads_the_sigma_of_gaussian_noise_on_a_flat_frame(sigma):
    import torch

    gen = torch.Generator().manual_seed(0)
    grey = 0.5 + sigma * torch.randn(4, 1, 224, 224, generator=gen)
    got = np.exp(_stats(grey.expand(4, 3, 224, 224).contiguous())["log_noise_sigma"])
    assert np.all(np.abs(got / sigma - 1) < 0.03), got


@needs_torch
def test_each_statistic_moves_with_its_degradation_on_a_photo():
    import torch
    import torch.nn.functional as F

    x = _view()
    gen = torch.Generator().manual_seed(1)
    noisy = (x + 0.05 * torch.randn(x.shape, generator=gen)).clamp(0, 1)
    k = torch.exp(-torch.arange(-6, 7, dtype=torch.float32) ** 2 / (2 * 2.0 ** 2))
    k = (k / k.sum()).reshape(1, 1, 1, -1).repeat(3, 1, 1, 1)
    blurred = F.conv2d(F.conv2d(F.pad(x, (6, 6, 6, 6), mode="replicate"), k, groups=3), k.transpose(2, 3), groups=3)
    hazy = 0.45 * x + 0.55 * torch.tensor([0.85, 0.85, 0.9]).reshape(1, 3, 1, 1)  # a veil: the scattering model
    motion = F.conv2d(F.pad(x, (6, 6, 0, 0), mode="replicate"), torch.full((3, 1, 1, 13), 1 / 13), groups=3)
    s = _stats(torch.cat([x, noisy, blurred, hazy, motion]))
    clean, n, b, h, m = range(5)
    assert s["log_noise_sigma"][n] > s["log_noise_sigma"][clean] + 0.5
    assert s["log_fine_coarse_laplacian"][n] > s["log_fine_coarse_laplacian"][clean]
    assert s["log_fine_coarse_laplacian"][b] < s["log_fine_coarse_laplacian"][clean]
    assert s["blur_effect"][b] > s["blur_effect"][clean] + 0.2
    assert s["log_mean_gradient"][b] < s["log_mean_gradient"][clean]
    assert s["dark_channel"][h] > s["dark_channel"][clean] + 0.2
    assert s["saturation"][h] < s["saturation"][clean]
    assert s["log_luma_std"][h] < s["log_luma_std"][clean]
    # a horizontal motion blur flattens the horizontal gradients only
    assert s["gradient_anisotropy"][m] > s["gradient_anisotropy"][clean] + 0.5


@needs_torch
@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (1, 3, 10, 37)])
def test_the_dark_channel_is_the_minimum_over_colours_and_the_clipped_15x15_window(shape):
    """Eager torch takes the window in two 1-D passes (severity.dark_channel); a direct numpy minimum over each
    pixel's whole clipped window must give the same map, value for value (minima are exact), also where the
    view is smaller than the window."""
    import torch

    from fgresq_sdk.severity import DARK_WINDOW, dark_channel, dark_channel_mean

    gen = torch.Generator().manual_seed(3)
    x = torch.rand(shape, generator=gen)
    x[:, :, : shape[2] // 3] = 0.6  # flat rows beside textured ones: ties and borders both
    half = DARK_WINDOW // 2
    lo = np.pad(x.numpy().min(axis=1), ((0, 0), (half, half), (half, half)), constant_values=np.inf)
    want = np.lib.stride_tricks.sliding_window_view(lo, (DARK_WINDOW, DARK_WINDOW), axis=(1, 2)).min(axis=(3, 4))
    with torch.no_grad():
        got = dark_channel(x)
        mean = dark_channel_mean(x)
    assert got.shape == (shape[0], 1) + shape[2:]
    np.testing.assert_array_equal(got[:, 0].numpy(), want)
    np.testing.assert_allclose(mean.numpy(), want.mean(axis=(1, 2), dtype=np.float64), rtol=1e-6)


@needs_torch
def test_a_flat_frame_reads_finite_values_at_the_ends_of_each_scale():
    import torch

    s = _stats(torch.full((1, 3, 224, 224), 0.4))
    assert s["blur_effect"][0] == pytest.approx(1.0)  # nothing left to blur
    assert s["saturation"][0] == pytest.approx(0.0, abs=1e-6) and s["dark_channel"][0] == pytest.approx(0.4)
    assert s["log_noise_sigma"][0] == pytest.approx(np.log(1e-6), abs=1e-3)
    assert s["gradient_anisotropy"][0] == pytest.approx(0.0, abs=1e-6)


@needs_torch
def test_the_statistics_export_to_onnx_and_agree_with_torch(tmp_path):
    import onnxruntime as ort
    import torch

    from fgresq_sdk.severity import classical_statistics

    class Stats(torch.nn.Module):
        def forward(self, x):
            return classical_statistics(x)

    x = torch.cat([_view("astronaut"), _view("coffee"), _view("chelsea")])
    path = tmp_path / "stats.onnx"
    torch.onnx.export(Stats(), (x,), str(path), input_names=["x"], output_names=["s"],
                      dynamic_axes={"x": {0: "n"}}, dynamo=False)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = classical_statistics(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
