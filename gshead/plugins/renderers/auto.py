"""``auto``: gsplat when the Gaussians are on a CUDA device, the numba ``cpu`` rasterizer otherwise.

Chosen per call from where the Gaussians live, so one pipeline config runs on a laptop and on
a GPU box. Both paths have the same semantics (gsplat's), so images agree up to float rounding.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from gshead.core.components import BuildContext
from gshead.core.config import RasterizerConfig
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, Gaussians, Render
from gshead.plugins.renderers.cpu import rasterize_cpu
from gshead.plugins.renderers.gsplat_cuda import rasterize_gsplat

__all__ = ["AutoRasterizer", "AutoRasterizerConfig"]


class AutoRasterizerConfig(RasterizerConfig):
    """gsplat for CUDA Gaussians, cpu (numba) otherwise."""

    name: Literal["auto"] = "auto"
    near_plane: float = Field(0.01, gt=0.0)
    """Gaussians whose camera-space z is at or below this (model units) are not drawn."""


class AutoRasterizer(torch.nn.Module):
    """``Rasterizer`` that dispatches on the Gaussians' device (no weights)."""

    def __init__(self, config: AutoRasterizerConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config

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
