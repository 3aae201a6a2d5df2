"""The ``gsplat`` (CUDA) rasterizer, and its registration beside ``auto``.

GPU tests are marked ``gpu`` and skipped when CUDA is unavailable; they compare gsplat with the
numba ``cpu`` rasterizer (same semantics) within 1e-3. The rest runs anywhere: registration
and the one-line error without CUDA. ``auto``'s own tests (dispatch, settings passed on) are in
``test_auto.py``.
"""

from __future__ import annotations

import pytest
import torch

from gshead.core.errors import GsheadError
from gshead.core.registry import Registry
from gshead.core.types import Camera, Gaussians
from gshead.plugins.rasterizers.auto import AutoRasterizerConfig
from gshead.plugins.rasterizers.cpu import rasterize_cpu
from gshead.plugins.rasterizers.gsplat import GsplatRasterizerConfig, rasterize_gsplat

W, H = 48, 40
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def scene(n: int = 300, channels: int = 5, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    gaussians = Gaussians(
        means=(torch.rand(batch, n, 3, generator=g) - 0.5) * torch.tensor([1.0, 1.0, 0.6]),
        quats=torch.randn(batch, n, 4, generator=g),
        scales=torch.rand(batch, n, 3, generator=g) * 0.06 + 0.005,
        opacities=torch.rand(batch, n, generator=g) * 0.95 + 0.05,
        features=torch.rand(batch, n, channels, generator=g),
    )
    return gaussians, Camera.frontal(2.5, 30.0, W, H, batch_size=batch)


def test_registered_through_the_registry():
    registry = Registry(
        builtin=["gshead.plugins.rasterizers.gsplat", "gshead.plugins.rasterizers.auto"], autoload=False
    )
    assert registry.get("rasterizer", "gsplat").config_class is GsplatRasterizerConfig
    assert registry.get("rasterizer", "auto").config_class is AutoRasterizerConfig


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")
def test_without_cuda_unavailable_and_a_one_line_error():
    assert "CUDA" in GsplatRasterizerConfig.unavailable()
    gaussians, camera = scene(10, 3)
    with pytest.raises(GsheadError, match="gsplat rasterizer: needs a CUDA device") as info:
        rasterize_gsplat(gaussians, camera)
    assert "\n" not in str(info.value)


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("channels", [3, 32])
def test_gsplat_matches_cpu(channels):
    gaussians, camera = scene(500, channels, batch=2, seed=channels)
    background = torch.rand(channels, generator=torch.Generator().manual_seed(3))
    want = rasterize_cpu(gaussians, camera, background)
    got = rasterize_gsplat(gaussians.to("cuda"), camera.to("cuda"), background.cuda())
    for field in ("features", "alpha", "depth"):
        a, b = getattr(got, field).cpu(), getattr(want, field)
        assert a.shape == b.shape, field
        assert (a - b).abs().max().item() <= 1e-3, field


@pytest.mark.gpu
@cuda
def test_gsplat_gradients_match_cpu():
    gaussians, camera = scene(80, 3, seed=4)
    grads = {}
    for device, fn in (("cpu", rasterize_cpu), ("cuda", rasterize_gsplat)):
        leaves = [t.detach().clone().to(device).requires_grad_(True) for t in gaussians.tensors().values()]
        render = fn(Gaussians(*leaves), camera.to(device))
        render.features.sum().backward()
        grads[device] = [t.grad.cpu() for t in leaves]
    for name, a, b in zip(["means", "quats", "scales", "opacities", "features"], grads["cuda"], grads["cpu"]):
        torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-3 * b.abs().max().item(), msg=name)


@pytest.mark.gpu
@cuda
def test_cpu_tensors_render_on_cuda_and_come_back():
    assert GsplatRasterizerConfig.unavailable() is None
    gaussians, camera = scene(100, 3, seed=6)
    got = rasterize_gsplat(gaussians, camera)
    assert got.features.device.type == "cpu"
    assert (got.features - rasterize_cpu(gaussians, camera).features).abs().max().item() <= 1e-3
