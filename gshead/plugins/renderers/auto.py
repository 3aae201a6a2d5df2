"""``auto``: gsplat when the Gaussians are on a CUDA device, the ``cpu`` rasterizer otherwise.

Chosen per call from where the Gaussians live, so one pipeline config runs on a laptop and on
a GPU box. Both paths have the same semantics (gsplat's), so images agree up to float rounding.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, Gaussians, Render
from gshead.plugins.renderers.cpu import CpuRasterizer, CpuRasterizerConfig, rasterize_cpu
from gshead.plugins.renderers.gsplat_cuda import rasterize_gsplat

__all__ = ["AutoRasterizer", "AutoRasterizerConfig"]


class AutoRasterizerConfig(CpuRasterizerConfig):
    """gsplat for CUDA Gaussians, cpu otherwise."""

    name: Literal["auto"] = "auto"  # type: ignore[assignment]


class AutoRasterizer(CpuRasterizer):
    """``Rasterizer`` that dispatches on the Gaussians' device (no weights)."""

    def forward(
        self,
        gaussians: Gaussians,  # [B, N]
        camera: Camera,  # [B]
        background: Tensor | None = None,  # [C] or None (zeros)
    ) -> Render:
        rasterize = rasterize_gsplat if gaussians.means.device.type == "cuda" else rasterize_cpu
        return rasterize(gaussians, camera, background, near=self.config.near_plane)


@hookimpl
def gshead_register_rasterizers(register):
    register(AutoRasterizerConfig, AutoRasterizer)
