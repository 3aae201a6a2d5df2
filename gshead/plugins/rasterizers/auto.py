"""``auto``: gsplat when the Gaussians are on a CUDA device, the ``cpu`` rasterizer otherwise.

Chosen per call from where the Gaussians live, so one pipeline config runs on a laptop and on
a GPU box. Both paths have the same semantics (gsplat's), so images agree up to float rounding.

``auto`` composes the two registered rasterizers without importing their modules: when built it
asks its ``BuildContext`` to build ``cpu`` (with this config's ``near_plane`` and ``kernel``) and
``gsplat`` (with ``near_plane``) from the registry the pipeline was built from (the process-wide
one when the context carries none), and each call goes to one of them. Its config has exactly the
fields it passes on; both sub-rasterizers are built eagerly (neither has weights, and building
gsplat needs no CUDA), so a registry without them fails at build time, naming the missing one.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from gshead.core.components import BuildContext
from gshead.core.config import RasterizerConfig
from gshead.core.hookspecs import hookimpl
from gshead.core.registry import get_registry
from gshead.core.types import Camera, Gaussians, Render

__all__ = ["AutoRasterizer", "AutoRasterizerConfig"]


class AutoRasterizerConfig(RasterizerConfig):
    """gsplat for CUDA Gaussians, cpu otherwise."""

    name: Literal["auto"] = "auto"
    near_plane: float = Field(0.01, gt=0.0)
    """Gaussians whose camera-space z is at or below this (model units) are not drawn (passed to
    both the cpu and the gsplat rasterizer)."""
    kernel: Literal["auto", "native", "numba"] = "auto"
    """Compositing kernels of the cpu rasterizer, used for CPU Gaussians (passed to it as its
    ``kernel``): 'native' (compiled AVX2), 'numba', or 'auto' (native where built and supported
    by the CPU, else numba). CUDA Gaussians go to gsplat, which has no such choice."""


class AutoRasterizer(torch.nn.Module):
    """``Rasterizer`` that dispatches on the Gaussians' device to a built ``cpu`` or ``gsplat``
    rasterizer (no weights)."""

    def __init__(self, config: AutoRasterizerConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config
        if context.registry is None:  # built outside a pipeline (a unit test, a script)
            context = dataclasses.replace(context, registry=get_registry())
        self.cpu_rasterizer = context.build(
            "rasterizer", {"name": "cpu", "near_plane": config.near_plane, "kernel": config.kernel}
        )
        self.gsplat_rasterizer = context.build(
            "rasterizer", {"name": "gsplat", "near_plane": config.near_plane}
        )

    def forward(
        self,
        gaussians: Gaussians,  # [B, N]
        camera: Camera,  # [B]
        background: Tensor | None = None,  # [C] or None (zeros)
    ) -> Render:
        on_cuda = gaussians.means.device.type == "cuda"
        rasterizer = self.gsplat_rasterizer if on_cuda else self.cpu_rasterizer
        return rasterizer(gaussians, camera, background)


@hookimpl
def gshead_register_rasterizers(register):
    register.add(AutoRasterizerConfig, AutoRasterizer)
