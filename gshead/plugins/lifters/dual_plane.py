"""``dual-plane``: GAGAvatar's dual lifting — two layers of Gaussians around a plane facing the camera.

Per source portrait:

1. a ``DPTHead`` (``gshead.plugins.lifters._dpt``) fuses the encoder's token maps and the image
   into a local feature map [B, F, S, S] (S = ``feature_size``, official 296);
2. an S x S grid of points lies on the plane through the world origin (the head's centre)
   perpendicular to the source camera's optical axis, spanning exactly what the camera sees at
   that depth through the pixel *corners*: point ``(row j, column i)`` (index ``n = j S + i``)
   projects onto pixel ``(i W / (S - 1), j H / (S - 1))`` (GAGAvatar's ``linspace(1, -1, S)``
   over the normalised image), so the first and last points sit on the image border;
3. the view direction ``d`` [B, 3] is the source camera's *forward* axis in head space (from
   the camera into the scene; ``forward_direction``), harmonic-encoded by ``direction_code``
   (``gshead.plugins._shared.direction_code``, shared with the ``expression-gaussians`` driver:
   pytorch3d's layout, 4 frequencies, 27 values) and broadcast to every pixel;
4. per plane ``k``, a conv head (3x3 convs, ReLU; 1x1 output) reads [local features, direction
   code] and predicts per point, in this channel order: ``C`` feature channels (0..2 RGB through
   a sigmoid, the rest linear), opacity (sigmoid), scale (3, sigmoid x ``max_scale``), rotation
   (4, normalised quaternion w, x, y, z), position (1, sigmoid x ``max_offset``);
5. layer 0 sits at ``plane + pos d`` (behind the plane, seen from the camera), layer 1 at
   ``plane - pos d`` (in front). Gaussians: layer 0 (S*S), then layer 1 (S*S).

``compat: official`` (``configs/gagavatar.yaml``) reproduces two quirks of the official code
that its trained weights depend on:

* the colour sigmoid is applied to ``colors[..., :3]`` of a [B, 32, H, W] tensor, i.e. along the
  *width* axis: all C feature channels go through a sigmoid in grid columns 0-2, and RGB stays
  linear everywhere else;
* the DPT's image branch is the ViT's input (the image resized to 518 px first; ``_dpt.py``).

``sane`` (the default, for new training) applies the sigmoid to RGB of every point and resizes
the source image straight to each DPT branch.

``planes: 1`` is the single-layer ablation of the same head: only the front head (``heads.0``)
runs, giving S*S Gaussians. ``C`` is the pipeline's ``feature_channels`` (GAGAvatar: 32).

Units. GAGAvatar works in FLAME units x 5; gshead's head models are in metres (the head is about
0.24 m tall). So GAGAvatar's scale bound 0.05 becomes ``max_scale = 0.01`` m and its position
range [0, 1] becomes ``max_offset = 0.2`` m. An importer keeps the weights and sets these two.

State-dict mapping (GAGAvatar -> gshead ``DualPlaneLifter``), ``k`` in {0, 1}:

=====================================  ==================================================
GAGAvatar                              gshead
=====================================  ==================================================
``base_model.<rest>``                  ``dpt.<rest>`` (see ``_dpt.py``'s table)
``base_model.dino_model.*``            the ``dinov2`` encoder's weights
``gs_generator_l{k}.gaussian_conv.*``  ``heads.{k}.gaussian_conv.*`` (indices 0, 2, 4, 6)
=====================================  ==================================================

Checked against the official code (``tests/plugins/test_gagavatar_parity.py``): the output
channel order above, ReLU between the head's convs, the harmonic layout, ``d`` = forward axis.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gshead.core.components import BuildContext
from gshead.core.config import LifterConfig
from gshead.core.errors import InputError, ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, FeatureMaps, Gaussians, HeadParams
from gshead.plugins._shared.direction_code import DIRECTION_CODE, direction_code, forward_direction
from gshead.plugins.lifters._dpt import DPTHead


class DualPlaneConfig(LifterConfig):
    """GAGAvatar's dual lifting: a DPT head, then front/back layers of Gaussians around a view-facing plane."""

    test_fields: ClassVar[dict[str, Any]] = {
        "projection_channels": (8, 8, 8, 8),
        "features": 8,
        "feature_size": 12,
        "hidden": 8,
    }

    name: Literal["dual-plane"] = "dual-plane"
    planes: Literal[1, 2] = 2
    """Layers of Gaussians: 2 (front and back, GAGAvatar) or 1 (front only: the single-layer ablation)."""
    projection_channels: tuple[int, int, int, int] = (64, 128, 256, 256)
    """DPT branch channels, finest first (GAGAvatar: 256, 512, 1024, 1024)."""
    features: int = Field(64, ge=4, le=1024)
    """Channels of the DPT's fused feature map (GAGAvatar: 256)."""
    feature_size: int = Field(64, ge=2, le=1024)
    """Side S of the fused feature map and of each plane's grid: planes x S x S Gaussians (GAGAvatar: 296)."""
    hidden: int = Field(64, ge=4, le=1024)
    """Width of each plane head's 3x3 convs (GAGAvatar: 128)."""
    max_scale: float = Field(0.01, gt=0.0)
    """Largest Gaussian standard deviation, metres (sigmoid-bounded; GAGAvatar's 0.05 in FLAME x 5 units)."""
    max_offset: float = Field(0.2, ge=0.0)
    """Largest move of a Gaussian off the plane along the view direction, metres (sigmoid-bounded;
    GAGAvatar's 1.0 in FLAME x 5 units). 0 keeps every Gaussian on the plane."""
    compat: Literal["sane", "official"] = "sane"
    """``official``: reproduce the official code's width-axis colour sigmoid and 518-px DPT image
    branch, which GAGAvatar's weights expect (module docstring); ``sane``: RGB sigmoid per point."""


def plane_points(camera: Camera, size: int) -> Tensor:
    """An S x S grid [B, S*S, 3] (world) on the plane through the origin facing ``camera``; point
    ``n = j S + i`` projects onto pixel ``(i W / (S - 1), j H / (S - 1))`` (pixel corners)."""
    w2c, k = camera.world_to_camera, camera.intrinsics  # [B, 4, 4], [B, 3, 3]
    dtype, device = w2c.dtype, w2c.device
    depth = w2c[:, 2, 3]  # [B] camera-space z of the world origin
    if bool((depth <= 0).any()):
        raise InputError(
            f"dual-plane: the world origin is behind the source camera (depth {depth.min().item():.3g}); "
            "expected a camera looking at the head"
        )
    steps = torch.linspace(0.0, 1.0, size, device=device, dtype=dtype)  # [S], corners 0 .. 1
    v, u = torch.meshgrid(steps * camera.height, steps * camera.width, indexing="ij")  # [S, S] each
    u, v = u.reshape(1, -1), v.reshape(1, -1)  # [1, N]
    fx, fy, cx, cy = k[:, 0, 0:1], k[:, 1, 1:2], k[:, 0, 2:3], k[:, 1, 2:3]  # [B, 1] each
    z = depth[:, None]  # [B, 1]
    cam = torch.stack([(u - cx) / fx * z, (v - cy) / fy * z, z.expand_as(u - cx)], dim=-1)  # [B, N, 3]
    rot, trans = w2c[:, :3, :3], w2c[:, :3, 3]
    return (cam - trans[:, None]) @ rot  # R^T (x_cam - t), [B, N, 3]


class PlaneHead(nn.Module):
    """GAGAvatar's ``gs_generator_l{k}``: [B, F + 27, S, S] -> raw Gaussian attributes [B, C + 9, S, S]."""

    def __init__(self, in_channels: int, hidden: int, out_channels: int) -> None:
        super().__init__()
        self.gaussian_conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, out_channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.gaussian_conv(x)


class DualPlaneLifter(nn.Module):
    """FeatureMaps [B] + camera [B or 1] -> Gaussians [B, planes * S * S] in head space."""

    def __init__(self, config: DualPlaneConfig, context: BuildContext) -> None:
        super().__init__()
        if not context.encoder_channels:
            raise ShapeError(
                "dual-plane: BuildContext.encoder_channels is empty; expected the encoder's channels"
            )
        if context.feature_channels < 3:
            raise ShapeError(
                f"dual-plane: feature_channels is {context.feature_channels}; expected at least 3 (RGB)"
            )
        self.config = config
        self.feature_channels = context.feature_channels
        self.dpt = DPTHead(
            tuple(context.encoder_channels),
            config.projection_channels,
            config.features,
            config.feature_size,
            vit_input_image=config.compat == "official",
        )
        self.split = (context.feature_channels, 1, 3, 4, 1)  # features, opacity, scale, rotation, position
        self.heads = nn.ModuleList(
            PlaneHead(config.features + DIRECTION_CODE, config.hidden, sum(self.split))
            for _ in range(config.planes)
        )
        with torch.no_grad():  # start rotations near identity (normalising a near-zero vector is unstable)
            for head in self.heads:
                head.gaussian_conv[-1].bias[sum(self.split[:3])] += 1.0

    def forward(self, features: FeatureMaps, source: HeadParams, camera: Camera) -> Gaussians:
        image = features.image  # [B, 3, H, W]
        b, dtype = image.shape[0], image.dtype
        if camera.batch_size not in (1, b):
            raise ShapeError(f"dual-plane: camera batch {camera.batch_size} does not match feature batch {b}")
        camera = camera.expand(b).to(image.device)
        camera = Camera(
            camera.world_to_camera.to(dtype), camera.intrinsics.to(dtype), camera.width, camera.height
        )
        s = self.config.feature_size
        local = self.dpt(features.local, image)  # [B, F, S, S]
        direction = forward_direction(camera)  # [B, 3] from the camera into the scene
        code = direction_code(direction)[:, :, None, None].expand(-1, -1, s, s)  # [B, 27, S, S]
        x = torch.cat([local, code.to(local.dtype)], dim=1)
        plane = plane_points(camera, s)  # [B, N, 3]
        layers = []
        c = self.feature_channels
        for k, head in enumerate(self.heads):
            grid = head(x)  # [B, C + 9, S, S]
            if self.config.compat == "official":  # sigmoid on grid columns 0-2, all C channels
                colours = grid[:, :c]
                colours = torch.cat([torch.sigmoid(colours[..., :3]), colours[..., 3:]], dim=-1)
                grid = torch.cat([colours, grid[:, c:]], dim=1)
            raw = grid.flatten(2).transpose(1, 2)  # [B, N, C + 9]
            feats, opacity, scale, quat, pos = raw.split(self.split, dim=-1)
            if self.config.compat != "official":
                feats = torch.cat([torch.sigmoid(feats[..., :3]), feats[..., 3:]], dim=-1)
            sign = 1.0 if k == 0 else -1.0  # layer 0 behind the plane, layer 1 in front
            offset = torch.sigmoid(pos) * self.config.max_offset  # [B, N, 1]
            layers.append(
                Gaussians(
                    means=plane + sign * offset * direction[:, None],
                    quats=F.normalize(quat, dim=-1),
                    scales=(torch.sigmoid(scale) * self.config.max_scale).clamp_min(1e-9),
                    opacities=torch.sigmoid(opacity[..., 0]),
                    features=feats,
                )
            )
        return layers[0] if len(layers) == 1 else Gaussians.cat(layers)


@hookimpl
def gshead_register_lifters(register) -> None:
    register.add(DualPlaneConfig, DualPlaneLifter)


__all__ = ["DualPlaneConfig", "DualPlaneLifter", "PlaneHead", "plane_points"]
