"""``single-plane``: an R x R grid of Gaussians on a plane facing the source camera.

The plane passes through the world origin (the head's centre) perpendicular to the source
camera's optical axis and spans exactly what the camera sees at that depth, so Gaussian
``(row j, column i)`` projects onto pixel ``((i + 0.5) W / R, (j + 0.5) H / R)`` of the source
image (pixel centres at +0.5, as in gsplat; index ``n = j R + i``). A per-point 1x1 head reads
the encoder's local features, the source image colour and the global token there, and predicts
residual RGB, the other feature channels, opacity, scale, rotation and an offset along the ray.

Untrained, the head's outputs are exact: RGB is the sampled image colour (residual layer
zero-initialised), opacity ``initial_opacity``, isotropic scales ``scale_factor`` x grid spacing,
identity rotations and zero offsets; only the extra feature channels start random (and carry
gradients back to the encoder from the first step).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gshead.core.components import BuildContext
from gshead.core.config import LifterConfig
from gshead.core.errors import InputError, ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, FeatureMaps, Gaussians, HeadParams


class SinglePlaneConfig(LifterConfig):
    """An R x R grid of Gaussians on the plane through the origin facing the source camera."""

    name: Literal["single-plane"] = "single-plane"
    resolution: int = Field(64, ge=2, le=1024)
    """Gaussians per side of the grid: the lifter makes resolution**2 Gaussians."""
    hidden: int = Field(64, ge=4, le=1024)
    """Width of the per-point head's two hidden layers."""
    initial_opacity: float = Field(0.95, gt=0.0, lt=1.0)
    """Opacity of every Gaussian before training."""
    scale_factor: float = Field(0.65, gt=0.0, le=4.0)
    """Initial standard deviation of each Gaussian, in grid spacings (isotropic)."""
    max_offset: float = Field(0.3, gt=0.0)
    """Largest move of a Gaussian along its camera ray, in camera-depth units (tanh-bounded; at most half
    the origin's depth)."""
    max_log_scale: float = Field(3.0, gt=0.0)
    """Bound on how far the head may change a scale, as |log(scale / initial scale)| (tanh-bounded)."""


# Rows of the head's output, in order.
_RGB, _OPACITY, _SCALE, _QUAT, _OFFSET = 3, 1, 3, 4, 1


class SinglePlaneLifter(nn.Module):
    """FeatureMaps [B] + camera [B or 1] -> Gaussians [B, R*R] in world space."""

    def __init__(self, config: SinglePlaneConfig, context: BuildContext) -> None:
        super().__init__()
        if not context.encoder_channels:
            raise ShapeError(
                "single-plane: BuildContext.encoder_channels is empty; expected the encoder's channels"
            )
        if context.feature_channels < 3:
            raise ShapeError(
                f"single-plane: feature_channels is {context.feature_channels}; expected at least 3 (RGB)"
            )
        self.config = config
        self.feature_channels = context.feature_channels
        self.encoder_channels = context.encoder_channels[0]
        self.global_channels = context.encoder_global_channels
        extra = context.feature_channels - 3
        in_channels = self.encoder_channels + 3 + self.global_channels  # local features, RGB, global token
        self.trunk = nn.Sequential(
            nn.Conv1d(in_channels, config.hidden, 1),
            nn.SiLU(),
            nn.Conv1d(config.hidden, config.hidden, 1),
            nn.SiLU(),
        )
        self.split = (_RGB, extra, _OPACITY, _SCALE, _QUAT, _OFFSET)
        self.out = nn.Conv1d(config.hidden, sum(self.split), 1)
        self._init_output(extra)

    def _init_output(self, extra: int) -> None:
        """Zero every output row except the extra features, so the untrained geometry is exact."""
        with torch.no_grad():
            w, b = self.out.weight, self.out.bias  # [O, hidden, 1], [O]
            keep = slice(_RGB, _RGB + extra)  # the extra feature channels keep the default init
            kept_w, kept_b = w[keep].clone(), b[keep].clone()
            w.zero_()
            b.zero_()
            w[keep], b[keep] = kept_w, kept_b
            opacity_row = _RGB + extra
            b[opacity_row] = math.log(self.config.initial_opacity / (1.0 - self.config.initial_opacity))

    def forward(self, features: FeatureMaps, source: HeadParams, camera: Camera) -> Gaussians:
        image = features.image  # [B, 3, H, W]
        fmap = features.local[0]  # [B, Ce, h, w]
        b = image.shape[0]
        if fmap.shape[1] != self.encoder_channels or features.global_token.shape[1] != self.global_channels:
            raise ShapeError(
                f"single-plane: built for {self.encoder_channels} local / {self.global_channels} global "
                f"encoder channels, got {fmap.shape[1]} / {features.global_token.shape[1]}"
            )
        if camera.batch_size not in (1, b):
            raise ShapeError(
                f"single-plane: camera batch {camera.batch_size} does not match feature batch {b}"
            )
        camera = camera.expand(b)
        dtype, device = image.dtype, image.device
        w2c = camera.world_to_camera.to(device=device, dtype=dtype)  # [B, 4, 4]
        k = camera.intrinsics.to(device=device, dtype=dtype)  # [B, 3, 3]
        depth = w2c[:, 2, 3]  # [B] camera-space z of the world origin
        if bool((depth <= 0).any()):
            raise InputError(
                "single-plane: the world origin is behind the source camera "
                f"(depth {depth.min().item():.3g}); "
                "expected a camera looking at the head"
            )

        # Pixel grid (continuous pixel coordinates, pixel centres at +0.5).
        r = self.config.resolution
        width, height = camera.width, camera.height
        steps = (torch.arange(r, device=device, dtype=dtype) + 0.5) / r  # [R]
        v, u = torch.meshgrid(steps * height, steps * width, indexing="ij")  # [R, R] each
        u, v = u.reshape(1, -1), v.reshape(1, -1)  # [1, N], n = j * R + i
        fx, fy, cx, cy = k[:, 0, 0:1], k[:, 1, 1:2], k[:, 0, 2:3], k[:, 1, 2:3]  # [B, 1] each
        x, y = (u - cx) / fx, (v - cy) / fy  # [B, N] each
        rays = torch.stack([x, y, torch.ones_like(x)], dim=-1)  # [B, N, 3], camera space, z = 1

        # Sample the image, the local features and broadcast the global token at each point.
        grid = torch.stack([2.0 * u / width - 1.0, 2.0 * v / height - 1.0], dim=-1)  # [1, N, 2]
        grid = grid.expand(b, -1, -1).unsqueeze(1)  # [B, 1, N, 2]
        rgb = _sample(image, grid)  # [B, 3, N]
        local = _sample(fmap, grid)  # [B, Ce, N]
        n = rgb.shape[-1]
        token = features.global_token.to(dtype)[:, :, None].expand(-1, -1, n)  # [B, G, N]
        head = self.out(self.trunk(torch.cat([local, rgb, token], dim=1)))  # [B, O, N]
        d_rgb, extra, opacity, log_scale, quat, offset = head.transpose(1, 2).split(self.split, dim=-1)

        # Geometry in camera space: z = depth + offset along each point's ray (projection unchanged).
        # The reach is capped at half the depth so no Gaussian can cross the camera plane.
        reach = torch.clamp(0.5 * depth, max=self.config.max_offset)[:, None, None]  # [B, 1, 1]
        z = depth[:, None, None] + reach * torch.tanh(offset)  # [B, N, 1]
        means_cam = rays * z  # [B, N, 3]
        c2w = torch.linalg.inv(w2c)  # [B, 4, 4]
        means = means_cam @ c2w[:, :3, :3].transpose(1, 2) + c2w[:, None, :3, 3]  # [B, N, 3]

        # Isotropic initial scale: scale_factor x the mean grid spacing on the plane.
        spacing = 0.5 * (width / (r * fx) + height / (r * fy)) * depth[:, None]  # [B, 1]
        bound = self.config.max_log_scale
        initial = (self.config.scale_factor * spacing)[:, :, None]  # [B, 1, 1]
        scales = initial * torch.exp(bound * torch.tanh(log_scale / bound))  # [B, N, 3]
        identity = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=dtype, device=device)
        quats = F.normalize(identity + quat, dim=-1)  # [B, N, 4] world frame, (w, x, y, z)
        colour = (rgb.transpose(1, 2) + d_rgb).clamp(0.0, 1.0)  # [B, N, 3]
        return Gaussians(
            means=means,
            quats=quats,
            scales=scales,
            opacities=torch.sigmoid(opacity[..., 0]),  # [B, N]
            features=torch.cat([colour, extra], dim=-1),  # [B, N, C]
        )


def _sample(maps: Tensor, grid: Tensor) -> Tensor:
    """Bilinear samples of ``maps`` [B, C, h, w] at ``grid`` [B, 1, N, 2] (in [-1, 1]) -> [B, C, N]."""
    return F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=False)[:, :, 0]


@hookimpl
def gshead_register_lifters(register) -> None:
    register.add(SinglePlaneConfig, SinglePlaneLifter)
