"""A head mesh splatted into a coarse depth buffer, seen by a camera.

Shared by the ``mesh-anchored`` lifter's image layer (``gshead.plugins.lifters._image_layer``: the
depth shell behind the head's outline) and the visibility test of the appearance prior
(``gshead.plugins._shared.appearance``). Each vertex and each triangle centroid is one surface
sample; every cell of an R x R grid over the image keeps the nearest sample's camera-space depth
(no triangle is rasterised: cheap, and enough at the resolutions where the samples are dense).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gshead.core.types import Camera

__all__ = ["splat_depth"]


def splat_depth(camera: Camera, vertices: Tensor, faces: Tensor, resolution: int) -> tuple[Tensor, Tensor]:
    """(zbuf [B, R*R] nearest camera-space z per cell, inf where no sample fell; solid [B, 1, R, R]
    1.0 on the cells the mesh covers after a 3x3 closing, which fills the cells no sample fell into)
    for ``vertices`` [B, V, 3] (world) and ``faces`` [F, 3] seen by ``camera`` [B], R = ``resolution``."""
    r = resolution
    b = vertices.shape[0]
    points = torch.cat([vertices, vertices[:, faces].mean(2)], 1)  # [B, V + F, 3] surface samples
    w2c = camera.world_to_camera.to(points)
    cam = points @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]  # [B, P, 3]
    z = cam[..., 2]
    uvw = cam @ camera.intrinsics.to(points).transpose(1, 2)
    uv = uvw[..., :2] / uvw[..., 2:].clamp_min(1e-6)
    ij = torch.stack([uv[..., 0] * r / camera.width, uv[..., 1] * r / camera.height], -1).floor().long()
    inside = (ij >= 0).all(-1) & (ij < r).all(-1) & (z > 1e-6)
    cell = (ij[..., 1] * r + ij[..., 0]).clamp(0, r * r - 1)
    far = torch.full((b, r * r), float("inf"), dtype=z.dtype, device=z.device)
    zbuf = far.scatter_reduce(1, cell, torch.where(inside, z, far[:, :1].expand_as(z)), "amin")
    hit = torch.isfinite(zbuf).to(z.dtype).view(b, 1, r, r)
    solid = -F.max_pool2d(-F.max_pool2d(hit, 3, 1, 1), 3, 1, 1)  # closing: dilate, then erode
    return zbuf, solid
