"""Pixel-aligned Gaussians for what a head mesh does not cover (hair, ears' fringe, neck, torso).

A lifter's helper (``mesh-anchored``'s ``image_layer``): an R x R grid over the source crop, one
Gaussian per cell centre, kept only outside the head mesh's silhouette (the mesh's own Gaussians
cover the inside). Each one lies on its camera ray at a *depth prior*: the head mesh is splatted
into an R x R depth buffer (``gshead.plugins._shared.depth.splat_depth``: nearest surface
sample per cell, small holes closed), the depths on the silhouette's rim are spread outwards
(``gshead.core.geometry.fill_holes``, push-pull), and the result is pushed back by ``behind`` head widths. Hair around the head therefore sits at about the
depth of the head's outline, the neck and shoulders at the depth of the jaw's outline: a shell
around the head, not a plane through it, and nothing in front of the face. A learned residual
moves each point along its ray (bounded, zero at initialisation).

Attributes come from a per-point 1x1 head on the encoder's local features, the image colour and
the global token (as ``single-plane``): untrained, the colour is the image's, opacity
``initial_opacity``, the scale ``scale_factor`` cells (isotropic) and rotations the identity.
With ``background: static`` the pipeline then keeps the ones on the person.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gshead.core.geometry import fill_holes
from gshead.core.types import Camera, FeatureMaps, Gaussians
from gshead.plugins._shared.depth import splat_depth

# Rows of the head's output, in order (the extra feature channels go after RGB).
_RGB, _OPACITY, _SCALE, _QUAT, _OFFSET = 3, 1, 3, 4, 1


class ImageLayer(nn.Module):
    """FeatureMaps [B] + camera [B] + head mesh [B, V, 3] -> pixel-aligned Gaussians [B, M]."""

    def __init__(
        self,
        resolution: int,
        feature_channels: int,
        encoder_channels: int,
        global_channels: int,
        hidden: int,
        initial_opacity: float,
        scale_factor: float = 0.75,
        behind: float = 0.05,
        max_offset: float = 0.15,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.scale_factor = scale_factor
        self.behind = behind
        self.max_offset = max_offset
        extra = feature_channels - 3
        self.trunk = nn.Sequential(
            nn.Conv1d(encoder_channels + 3 + global_channels, hidden, 1),
            nn.SiLU(),
            nn.Conv1d(hidden, hidden, 1),
            nn.SiLU(),
        )
        self.split = (_RGB, extra, _OPACITY, _SCALE, _QUAT, _OFFSET)
        self.out = nn.Conv1d(hidden, sum(self.split), 1)
        with torch.no_grad():  # exact untrained geometry: zero every row but the extra features
            w, b = self.out.weight, self.out.bias
            keep = slice(_RGB, _RGB + extra)
            kept_w, kept_b = w[keep].clone(), b[keep].clone()
            w.zero_()
            b.zero_()
            w[keep], b[keep] = kept_w, kept_b
            b[_RGB + extra] = math.log(initial_opacity / (1.0 - initial_opacity))

    def depth_prior(self, camera: Camera, vertices: Tensor, faces: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(depth [B, R*R] camera-space z per cell, outside [B, R*R] bool: cells off the mesh's
        silhouette, width [B] the mesh's width) for ``vertices`` [B, V, 3] seen by ``camera``."""
        r = self.resolution
        b = vertices.shape[0]
        w2c = camera.world_to_camera.to(vertices)
        zbuf, solid = splat_depth(camera, vertices, faces, r)  # [B, R*R], [B, 1, R, R]
        hit = torch.isfinite(zbuf).to(zbuf.dtype).view(b, 1, r, r)
        rim = solid - (-F.max_pool2d(-solid, 5, 1, 2))  # the outermost two cells of the silhouette
        known = rim * hit
        zmap = torch.where(hit > 0, zbuf.view(b, 1, r, r), torch.zeros_like(hit))
        origin = w2c[:, 2, 3].view(b, 1, 1, 1).expand_as(zmap)  # no mesh in view: the head's centre
        have = known.flatten(1).sum(1) > 0
        filled = torch.where(have.view(b, 1, 1, 1), fill_holes(zmap, known), origin)
        width = (vertices[..., 0].amax(1) - vertices[..., 0].amin(1)).clamp_min(1e-6)  # [B]
        depth = filled.flatten(1) + self.behind * width[:, None]
        core = -F.max_pool2d(-solid, 3, 1, 1)  # the silhouette less its outermost cell
        return depth, core.flatten(1) < 0.5, width

    def forward(self, features: FeatureMaps, camera: Camera, vertices: Tensor, faces: Tensor) -> Gaussians:
        image, fmap = features.image, features.local[0]
        b, r = image.shape[0], self.resolution
        camera = camera.expand(b)
        dtype, device = image.dtype, image.device
        with torch.no_grad():
            depth, outside, width = self.depth_prior(camera, vertices.detach(), faces)
        k = camera.intrinsics.to(device=device, dtype=dtype)
        steps = (torch.arange(r, device=device, dtype=dtype) + 0.5) / r
        v, u = torch.meshgrid(steps * camera.height, steps * camera.width, indexing="ij")
        u, v = u.reshape(1, -1), v.reshape(1, -1)  # [1, N]
        fx, fy, cx, cy = k[:, 0, 0:1], k[:, 1, 1:2], k[:, 0, 2:3], k[:, 1, 2:3]
        rays = torch.stack([(u - cx) / fx, (v - cy) / fy, torch.ones_like(u - cx)], -1)  # [B, N, 3]
        if b == 1:  # drop the cells on the mesh (a batch keeps them all, transparent, to stay square)
            keep = outside[0].nonzero()[:, 0]
            u, v, rays, depth = u[:, keep], v[:, keep], rays[:, keep], depth[:, keep]
        grid = torch.stack([2.0 * u / camera.width - 1.0, 2.0 * v / camera.height - 1.0], -1)
        grid = grid.expand(b, -1, -1).unsqueeze(1)  # [B, 1, N, 2]
        rgb = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0]
        local = F.grid_sample(fmap, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0]
        n = rgb.shape[-1]
        token = features.global_token.to(dtype)[:, :, None].expand(-1, -1, n)
        out = self.out(self.trunk(torch.cat([local, rgb, token], 1))).transpose(1, 2)  # [B, N, O]
        d_rgb, extra, opacity, log_scale, quat, offset = out.split(self.split, -1)
        z = depth[..., None] + self.max_offset * width[:, None, None] * torch.tanh(offset)  # [B, N, 1]
        w2c = camera.world_to_camera.to(device=device, dtype=dtype)
        c2w = torch.linalg.inv(w2c)
        means = (rays * z) @ c2w[:, :3, :3].transpose(1, 2) + c2w[:, None, :3, 3]
        spacing = z * (0.5 * (camera.width / (r * fx) + camera.height / (r * fy)))[:, :, None]  # [B, N, 1]
        scales = self.scale_factor * spacing * torch.exp(2.0 * torch.tanh(log_scale / 2.0))
        identity = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype, device=device)
        opacities = torch.sigmoid(opacity[..., 0])
        if b > 1:
            opacities = opacities * outside.to(dtype)
        return Gaussians(
            means=means,
            quats=F.normalize(identity + quat, dim=-1),
            scales=scales,
            opacities=opacities,
            features=torch.cat([(rgb.transpose(1, 2) + d_rgb).clamp(0.0, 1.0), extra], -1),
        )
