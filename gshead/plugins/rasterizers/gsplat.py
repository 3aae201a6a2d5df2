"""``gsplat``: the CUDA rasterizer, a thin adapter over ``gsplat.rasterization``.

Same semantics as ``torch-tiles`` and ``cpu`` (they follow gsplat): N-channel ``colors`` (no
spherical harmonics), classic (not antialiased) mode, ``render_mode="RGB+D"`` so the last
channel is the accumulated (not alpha-normalised) camera-space depth, and the alpha returned
separately. Gaussians ``[B, N]`` with cameras ``[B]`` map onto gsplat's batch dimensions as
``[B, N]`` Gaussians seen by ``[B, 1]`` cameras.

gsplat is imported lazily (its CUDA kernels build or load on first use), only when rendering
with CUDA available: on a CPU-only machine this module imports and registers fine, the config
reports the component unavailable, and rendering raises a one-line ``GsheadError`` pointing at
the ``cpu`` and ``auto`` rasterizers. CPU tensors, with CUDA available, are rendered on the
current CUDA device and the results moved back to the CPU.
"""

from __future__ import annotations

import importlib.util
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from gshead.core.components import BuildContext
from gshead.core.config import RasterizerConfig
from gshead.core.errors import GsheadError, ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, Gaussians, Render
from gshead.plugins.rasterizers._projection import EPS2D, broadcast_batches, check_finite

__all__ = ["GsplatRasterizer", "GsplatRasterizerConfig", "rasterize_gsplat"]


def rasterize_gsplat(
    gaussians: Gaussians,  # [B, N] on CUDA (or [1, N], broadcast to the cameras)
    camera: Camera,  # [B] (or [1], broadcast to the Gaussians)
    background: Tensor | None = None,  # [C] or None (zeros)
    near: float = 0.01,
) -> Render:
    """Render with gsplat on CUDA (semantics of ``rasterize_tiles``).

    Returns ``Render`` with features [B, C, H, W], alpha [B, 1, H, W], depth [B, 1, H, W] in
    the Gaussians' dtype and device (CPU inputs are rendered on the current CUDA device). Raises
    ``GsheadError`` without CUDA or gsplat and on NaN/inf inputs; ``ShapeError`` on mismatched
    batches, a bad background shape or zero channels.
    """
    reason = GsplatRasterizerConfig.unavailable()
    if reason:
        raise GsheadError(f"gsplat rasterizer: {reason}; use the 'cpu' or 'auto' rasterizer")
    home = gaussians.means.device
    device = home if home.type == "cuda" else torch.device("cuda")
    gaussians, camera = gaussians.to(device), camera.to(device)
    from gsplat import rasterization

    gaussians, camera = broadcast_batches(gaussians, camera)
    channels = gaussians.channels
    if channels < 1:
        raise ShapeError("Gaussians.features: expected at least one channel, got 0")
    dtype = gaussians.means.dtype
    if background is None:
        background = torch.zeros(channels, dtype=dtype, device=device)
    elif background.shape != (channels,):
        raise ShapeError(f"background: expected shape [{channels}], got {list(background.shape)}")
    background = background.to(device)
    check_finite(gaussians, camera, background)

    f32 = torch.float32
    batch = camera.batch_size
    colors, alphas, _ = rasterization(
        means=gaussians.means.to(f32),  # [B, N, 3]
        quats=gaussians.quats.to(f32),  # [B, N, 4]
        scales=gaussians.scales.to(f32),  # [B, N, 3]
        opacities=gaussians.opacities.to(f32),  # [B, N]
        colors=gaussians.features.to(f32),  # [B, N, C]
        viewmats=camera.world_to_camera.to(device=device, dtype=f32)[:, None],  # [B, 1, 4, 4]
        Ks=camera.intrinsics.to(device=device, dtype=f32)[:, None],  # [B, 1, 3, 3]
        width=camera.width,
        height=camera.height,
        near_plane=near,
        eps2d=EPS2D,
        sh_degree=None,
        packed=False,
        backgrounds=background.to(device=device, dtype=f32).expand(batch, 1, channels),  # [B, 1, C]
        render_mode="RGB+D",
        rasterize_mode="classic",
        channel_chunk=channels + 1,  # features and depth in one pass
    )  # colors [B, 1, H, W, C + 1], alphas [B, 1, H, W, 1]
    colors = colors[:, 0].permute(0, 3, 1, 2)  # [B, C + 1, H, W]
    return Render(
        features=colors[:, :channels].contiguous().to(dtype),
        alpha=alphas[:, 0].permute(0, 3, 1, 2).contiguous().to(dtype),
        depth=colors[:, channels:].contiguous().to(dtype),
    ).to(home)


class GsplatRasterizerConfig(RasterizerConfig):
    """gsplat's CUDA rasterizer: the fast path on a GPU; same images as torch-tiles and cpu."""

    name: Literal["gsplat"] = "gsplat"
    near_plane: float = Field(0.01, gt=0.0)
    """Gaussians whose camera-space z is at or below this (model units) are not drawn."""

    @classmethod
    def unavailable(cls) -> str | None:
        if not torch.cuda.is_available():
            return "needs a CUDA device (torch.cuda.is_available() is False)"
        if importlib.util.find_spec("gsplat") is None:
            return "needs gsplat (pip install 'gshead[cuda]')"
        return None


class GsplatRasterizer(torch.nn.Module):
    """``Rasterizer`` component wrapping ``rasterize_gsplat`` (no weights)."""

    def __init__(self, config: GsplatRasterizerConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config

    def forward(
        self,
        gaussians: Gaussians,  # [B, N] on CUDA
        camera: Camera,  # [B]
        background: Tensor | None = None,  # [C] or None (zeros)
    ) -> Render:
        return rasterize_gsplat(gaussians, camera, background, near=self.config.near_plane)


@hookimpl
def gshead_register_rasterizers(register):
    register.add(GsplatRasterizerConfig, GsplatRasterizer)
