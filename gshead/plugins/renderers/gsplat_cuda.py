"""``gsplat``: the CUDA rasterizer, a thin adapter over ``gsplat.rasterization``.

Same semantics as ``torch-tiles`` and ``cpu`` (they follow gsplat): N-channel ``colors`` (no
spherical harmonics), classic (not antialiased) mode, ``render_mode="RGB+D"`` so the last
channel is the accumulated (not alpha-normalised) camera-space depth, and the alpha returned
separately. Gaussians ``[B, N]`` with cameras ``[B]`` map onto gsplat's batch dimensions as
``[B, N]`` Gaussians seen by ``[B, 1]`` cameras.

gsplat is imported lazily (its CUDA kernels build or load on first use), and only when the
Gaussians are on a CUDA device: on a CPU-only machine this module imports and registers fine,
and rendering raises a one-line ``GsheadError`` pointing at the ``cpu`` and ``auto`` rasterizers.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from gshead.core.components import BuildContext
from gshead.core.config import RasterizerConfig
from gshead.core.errors import GsheadError, ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, Gaussians, Render
from gshead.plugins.renderers.projection import check_finite
from gshead.plugins.renderers.torch_tiles import EPS2D, _broadcast

__all__ = ["GsplatRasterizer", "GsplatRasterizerConfig", "rasterize_gsplat"]


def rasterize_gsplat(
    gaussians: Gaussians,  # [B, N] on CUDA (or [1, N], broadcast to the cameras)
    camera: Camera,  # [B] (or [1], broadcast to the Gaussians)
    background: Tensor | None = None,  # [C] or None (zeros)
    near: float = 0.01,
) -> Render:
    """Render with gsplat on the Gaussians' CUDA device (semantics of ``rasterize_tiles``).

    Returns ``Render`` with features [B, C, H, W], alpha [B, 1, H, W], depth [B, 1, H, W] in
    the Gaussians' dtype. Raises ``GsheadError`` when the Gaussians are not on CUDA (or CUDA or
    gsplat is unavailable) and on NaN/inf inputs; ``ShapeError`` on mismatched batches, a bad
    background shape or zero channels.
    """
    device = gaussians.means.device
    if device.type != "cuda" or not torch.cuda.is_available():
        raise GsheadError(
            f"gsplat rasterizer needs CUDA tensors and a CUDA device; the Gaussians are on {device} "
            f"(CUDA available: {torch.cuda.is_available()}); use the 'cpu' or 'auto' rasterizer"
        )
    try:
        from gsplat import rasterization
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise GsheadError(
            f"gsplat rasterizer: cannot import gsplat ({exc}); pip install 'gshead[cuda]'"
        ) from None

    gaussians, camera = _broadcast(gaussians, camera)
    channels = gaussians.channels
    if channels < 1:
        raise ShapeError("Gaussians.features: expected at least one channel, got 0")
    dtype = gaussians.means.dtype
    if background is None:
        background = torch.zeros(channels, dtype=dtype, device=device)
    elif background.shape != (channels,):
        raise ShapeError(f"background: expected shape [{channels}], got {list(background.shape)}")
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
    )


class GsplatRasterizerConfig(RasterizerConfig):
    """gsplat's CUDA rasterizer: the fast path on a GPU; same images as torch-tiles and cpu."""

    name: Literal["gsplat"] = "gsplat"
    near_plane: float = Field(0.01, gt=0.0)
    """Gaussians whose camera-space z is at or below this (model units) are not drawn."""


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
    register(GsplatRasterizerConfig, GsplatRasterizer)
