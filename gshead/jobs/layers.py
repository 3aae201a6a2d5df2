"""Extra layers of Gaussians for a file export (``gshead export --layers all``).

With ``background: static`` an avatar keeps the portrait's background as an image
(``Avatar.background`` [1, C, S, S]) that gshead composites behind every render (features +
(1 - alpha) background). A splat file holds only Gaussians, so ``background_layer`` turns that
image into Gaussians that show the same picture from the avatar's source camera:

- a ``grid`` x ``grid`` lattice (``BACKGROUND_GRID``, 128 by default; never finer than the image),
  one Gaussian per pixel of the background downsampled to that size (bilinear, antialiased, as
  ``_over_background`` resizes it), carrying all C feature channels;
- on the plane perpendicular to the camera's optical axis at camera depth
  ``d = far * (1 + BACKGROUND_DEPTH_MARGIN)``, where ``far`` is the largest camera-space depth of
  the head's Gaussian centres (those in front of the camera): the plane lies behind the whole head,
  10% of that depth further back;
- each centre the unprojection of its lattice cell's centre through the camera (intrinsics and
  world-to-camera) to depth ``d``, so the lattice covers the camera's whole image, edge to edge;
- flat and opaque: rotation = the camera's axes (local x, y in the plane, z along the view),
  in-plane standard deviations ``BACKGROUND_SIGMA`` (0.8) of a cell's footprint at depth ``d``
  (neighbours overlap: inside the image the coverage is 99.9%, and at the image's corners,
  where one does, gshead's render still has alpha 0.96), ``BACKGROUND_THICKNESS`` (0.25) of that
  along the view, opacity ``BACKGROUND_OPACITY`` (0.99). Thinner is not flatter in practice: at
  metre scale its variance underflows the half floats gsplat.js packs covariances in, and
  gsplat.js then draws none of the layer. Opacity 1 is worse than 0.99: a rasterizer with 3DGS's
  early stop (a Gaussian that would take the transmittance below 1e-4 is skipped, gshead's too)
  skips a pixel's own splat after its neighbours' and leaves the lattice 96% opaque.

From the source camera the layer therefore fills the view behind the head, as gshead's composite
does. Seen from elsewhere it is a flat backdrop (the background is the source view's; gshead keeps
it on the screen whatever the camera does, a file cannot).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gshead.core.errors import InputError
from gshead.core.geometry import rotmat_to_quat
from gshead.core.types import Camera, Gaussians

LAYERS = ("head", "all")
"""``--layers``: ``head`` the head's Gaussians (static and posed, less a still torso); ``all`` the
avatar's with the background."""

BACKGROUND_GRID = 128
"""Side of the background lattice (Gaussians per row and column)."""

BACKGROUND_DEPTH_MARGIN = 0.1
"""The background plane's depth beyond the head's farthest Gaussian centre, as a fraction of it."""

BACKGROUND_SIGMA = 0.8
"""In-plane standard deviation of a background Gaussian, in lattice cells."""

BACKGROUND_THICKNESS = 0.25
"""Standard deviation along the view of a background Gaussian, as a fraction of the in-plane one."""

BACKGROUND_OPACITY = 0.99
"""Opacity of a background Gaussian (not 1: the module docstring)."""


def background_depth(camera: Camera, head: Gaussians) -> float:
    """Camera-space depth of the background plane: ``BACKGROUND_DEPTH_MARGIN`` beyond the farthest
    centre of ``head`` [1, N] (world space) in front of ``camera`` [1]; InputError if none is."""
    w2c = camera.world_to_camera[0].to(head.means)
    depth = head.means[0] @ w2c[2, :3] + w2c[2, 3]  # [N] camera-space z
    depth = depth[torch.isfinite(depth) & (depth > 0)]
    if depth.numel() == 0:
        raise InputError("--layers all: no Gaussian of the head lies in front of the source camera")
    return float(depth.max()) * (1.0 + BACKGROUND_DEPTH_MARGIN)


def background_layer(
    background: Tensor, camera: Camera, head: Gaussians, grid: int = BACKGROUND_GRID
) -> Gaussians:
    """``background`` [1, C, S, S] (the avatar's) as ``g * g`` flat opaque Gaussians [1, g * g]
    (``g = min(grid, S)``, row-major from the image's top-left) on a plane behind ``head`` [1, N]
    (world space), seen by ``camera`` [1] (the avatar's source camera) as the background image
    stretched over its whole view. Geometry: the module docstring."""
    if background.dim() != 4 or background.shape[0] != 1:
        raise InputError(
            f"--layers all: expected a background of shape [1, C, S, S], got {list(background.shape)}"
        )
    dtype = head.means.dtype
    g = max(1, min(int(grid), background.shape[-1], background.shape[-2]))
    with torch.no_grad():
        image = background.detach().to("cpu", dtype)
        if image.shape[-2:] != (g, g):
            image = F.interpolate(image, size=(g, g), mode="bilinear", align_corners=False, antialias=True)
        features = image[0].permute(1, 2, 0).reshape(1, g * g, -1)  # [1, g*g, C]
        depth = background_depth(camera, head.to("cpu"))
        w2c = camera.world_to_camera[0].detach().to("cpu", torch.float64)
        k = camera.intrinsics[0].detach().to("cpu", torch.float64)
        fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
        cell_u, cell_v = camera.width / g, camera.height / g  # a cell's size in pixels
        u = (torch.arange(g, dtype=torch.float64) + 0.5) * cell_u  # [g] pixel columns
        v = (torch.arange(g, dtype=torch.float64) + 0.5) * cell_v  # [g] pixel rows
        vv, uu = torch.meshgrid(v, u, indexing="ij")  # [g, g]
        points = torch.stack([(uu - cx) / fx * depth, (vv - cy) / fy * depth, torch.full_like(uu, depth)], -1)
        rot, trans = w2c[:3, :3], w2c[:3, 3]
        means = (points.reshape(-1, 3) - trans) @ rot  # [g*g, 3] camera -> world: R^T (p - t)
        sx = float(BACKGROUND_SIGMA * cell_u / fx * depth)
        sy = float(BACKGROUND_SIGMA * cell_v / fy * depth)
        sz = BACKGROUND_THICKNESS * min(sx, sy)
        n = g * g
        quat = rotmat_to_quat(rot.T).to(dtype)  # [4] (w, x, y, z): the camera's axes in the world
        layer = Gaussians(
            means=means.to(dtype)[None],
            quats=quat.expand(1, n, 4).contiguous(),
            scales=torch.tensor([sx, sy, sz], dtype=dtype).expand(1, n, 3).contiguous(),
            opacities=torch.full((1, n), BACKGROUND_OPACITY, dtype=dtype),
            features=features.contiguous(),
        )
    return layer


TORSO_WEIGHT = 0.5
"""``head``: the static Gaussians whose still-torso weight (``Avatar.body``, ``torso: still``) is
at least this are the torso's layer (the shoulders and chest; the upper half of the neck stays)."""


def without_torso(gaussians: Gaussians, body: Tensor | None) -> Gaussians:
    """``gaussians`` [1, Ns + M] (static first, as ``export_gaussians`` gives them) less the still
    torso's static Gaussians (weight ``body`` [1, Ns] at least ``TORSO_WEIGHT``); unchanged when
    the avatar has no still torso (``body`` None)."""
    if body is None:
        return gaussians
    keep = torch.ones(gaussians.count, dtype=torch.bool)
    keep[: body.shape[1]] = body[0].to("cpu") < TORSO_WEIGHT
    keep = keep.to(gaussians.means.device)
    return Gaussians(**{k: v[:, keep] for k, v in gaussians.tensors().items()})


def export_layers(
    gaussians: Gaussians, layers: str, background: Tensor | None, camera: Camera, body: Tensor | None = None
) -> tuple[Gaussians, str | None]:
    """What ``gshead export --layers`` writes from the avatar's posed Gaussians ``gaussians`` [1, N]
    (``export_gaussians``: static first): ``head`` without the still torso (``without_torso``),
    ``all`` with it and the background lattice (``with_layers``); and a note or None."""
    if layers not in LAYERS:
        raise InputError(f"--layers {layers!r}: expected one of {', '.join(LAYERS)}")
    if layers == "head":
        return without_torso(gaussians, body), None
    return with_layers(gaussians, layers, background, camera)


def with_layers(
    gaussians: Gaussians, layers: str, background: Tensor | None, camera: Camera
) -> tuple[Gaussians, str | None]:
    """``gaussians`` [1, N] (the head in world space) with the layers ``layers`` asks for (``LAYERS``)
    appended, and a note when a layer asked for does not exist (None otherwise): ``all`` without
    a background (``background: lifted``, where the background is in the head's Gaussians) adds
    nothing."""
    if layers not in LAYERS:
        raise InputError(f"--layers {layers!r}: expected one of {', '.join(LAYERS)}")
    if layers == "head":
        return gaussians, None
    if background is None:
        return gaussians, (
            "--layers all: this avatar has no separate background (background: lifted keeps it in "
            "the head's Gaussians); writing the head's Gaussians only"
        )
    layer = background_layer(background, camera, gaussians)
    if layer.channels != gaussians.channels:
        raise InputError(
            f"--layers all: the background has {layer.channels} channels, the Gaussians {gaussians.channels}"
        )
    return Gaussians.cat([gaussians, layer.to(gaussians.means.device)]), None


__all__ = [
    "BACKGROUND_DEPTH_MARGIN",
    "BACKGROUND_GRID",
    "BACKGROUND_OPACITY",
    "BACKGROUND_SIGMA",
    "BACKGROUND_THICKNESS",
    "LAYERS",
    "TORSO_WEIGHT",
    "background_depth",
    "background_layer",
    "export_layers",
    "with_layers",
    "without_torso",
]
