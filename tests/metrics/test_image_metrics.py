"""PSNR and SSIM against plain reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gshead.core.errors import ShapeError
from gshead.metrics.image import PSNR_CAP_DB, psnr, ssim

pytest.importorskip("torchmetrics")


def _images(seed: int, b: int = 3, size: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, size, size, generator=g)


def _psnr_numpy(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10.0 * math.log10(1.0 / mse)


def _ssim_reference(a: torch.Tensor, b: torch.Tensor, size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Direct Gaussian-window SSIM (Wang et al. 2004) per image [B]: borders padded by reflection,
    mean over every pixel (the convention gshead reports, see gshead.metrics.image)."""
    pad = (size - 1) // 2
    a = torch.nn.functional.pad(a.double(), (pad,) * 4, mode="reflect")
    b = torch.nn.functional.pad(b.double(), (pad,) * 4, mode="reflect")
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(3, 1, size, size)
    blur = lambda t: torch.nn.functional.conv2d(t, window, groups=3)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3))


def test_psnr_matches_numpy_reference():
    a, b = _images(0), _images(1)
    b = (a + 0.1 * (b - 0.5)).clamp(0, 1)
    got = psnr(a, b)
    assert got.shape == (3,)
    for i in range(3):
        assert got[i].item() == pytest.approx(_psnr_numpy(a[i].numpy(), b[i].numpy()), abs=1e-3)


def test_psnr_of_identical_images_is_capped():
    a = _images(2)
    b = a.clone()
    b[1] = (b[1] + 0.05).clamp(0, 1)
    got = psnr(a, b)
    assert got[0].item() == PSNR_CAP_DB and got[2].item() == PSNR_CAP_DB
    assert got[1].item() < PSNR_CAP_DB and math.isfinite(got.mean().item())


def test_ssim_matches_gaussian_window_reference():
    a, b = _images(3, size=32), _images(4, size=32)
    b = (0.7 * a + 0.3 * b).clamp(0, 1)
    got = ssim(a, b)
    want = _ssim_reference(a, b)
    assert got.shape == (3,)
    torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=0)
    assert torch.allclose(ssim(a, a), torch.ones(3), atol=1e-5)
    assert (got < 0.99).all()


def test_metrics_reject_mismatched_or_tiny_images():
    with pytest.raises(ShapeError, match="one shape"):
        psnr(_images(0, size=16), _images(0, size=24))
    with pytest.raises(ShapeError, match="at least 11"):
        ssim(_images(0, b=1, size=8), _images(1, b=1, size=8))
