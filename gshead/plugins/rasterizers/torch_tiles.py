"""``torch-tiles``: the pure-torch, tile-based, differentiable reference rasterizer.

What it is: 3D Gaussian splatting written only with torch tensor ops. Gaussians are projected
(``_projection.project_gaussians``), binned into square tiles of pixels by their screen boxes,
and each tile is composited front to back with dense ``[pixels, Gaussians]`` matrices, in a
Python loop over cameras and tiles. Autograd gives the backward pass.

Why it exists: it is the correctness oracle for the fast rasterizers (e.g. the numba kernel)
and the one to read to learn the exact semantics. It favours clarity over speed (roughly 10x
slower than a tuned CPU kernel) but is fast enough for tests and small renders.

Conventions (gsplat's), per camera and per pixel with centre ``(px + 0.5, py + 0.5)``:

1. projection, culling, conics and radii as in ``_projection.py``;
2. Gaussians sorted front to back by camera-space z, ties kept in index order (stable sort);
3. for each Gaussian in that order: ``d = centre - mean2d``,
   ``sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy``; skip it if ``sigma < 0``;
   ``alpha = min(0.999, opacity * exp(-sigma))``; skip it if ``alpha < 1/255``;
   ``next_T = T * (1 - alpha)``; if ``next_T <= 1e-4`` stop (this Gaussian is *not* blended);
   else ``acc += feature * alpha * T``, ``depth += z * alpha * T``, ``T = next_T``;
4. output ``features = acc + T * background``, ``alpha = 1 - T``, ``depth`` = the accumulated
   alpha-weighted z (not divided by alpha).

The result does not depend on the tile size: a Gaussian's box (3.33 sigma) holds every pixel
where its alpha can reach 1/255, and a tile's list holds every Gaussian whose box touches it.

Vectorised form of step 3 within a tile (exact, not an approximation): with the skipped alphas
set to 0, the transmittance before each Gaussian is an exclusive cumulative product of
``1 - alpha`` seeded with the incoming ``T`` (products taken left to right, as the loop does);
the early stop is the mask ``T_after > 1e-4`` (``T`` only decreases, so the mask is a prefix).
Long tile lists are processed in depth-ordered chunks that carry ``T`` and a ``stopped`` flag.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from gshead.core.components import BuildContext
from gshead.core.config import RasterizerConfig
from gshead.core.errors import ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, Gaussians, Render
from gshead.plugins.rasterizers._projection import EPS2D, broadcast_batches, check_finite, project_gaussians

__all__ = ["TorchTilesConfig", "TorchTilesRasterizer", "rasterize_tiles"]

ALPHA_MAX = 0.999  # alpha is clamped to this (keeps 1 - alpha > 0)
ALPHA_MIN = 1.0 / 255.0  # contributions below this are skipped
T_MIN = 1e-4  # stop before the transmittance would drop to this or below
SIGMA_CAP = 50.0  # exp(-sigma) is taken at min(sigma, 50): no effect for opacities below 1e19
DEFAULT_CHUNK = 512  # Gaussians per compositing step within a tile (bounds memory)


def rasterize_tiles(
    gaussians: Gaussians,  # [B, N] (or [1, N], broadcast to the cameras)
    camera: Camera,  # [B] (or [1], broadcast to the Gaussians)
    background: Tensor | None = None,  # [C] or None (zeros)
    tile_size: int = 16,
    near: float = 0.01,
    *,
    chunk_size: int = DEFAULT_CHUNK,
) -> Render:
    """Render ``gaussians`` through ``camera`` (semantics in the module docstring).

    Returns ``Render`` with features [B, C, H, W], alpha [B, 1, H, W], depth [B, 1, H, W], in the
    Gaussians' dtype and device. Differentiable w.r.t. means, quats, scales, opacities and
    features (and the background). Raises ``GsheadError`` on NaN/inf inputs, ``ShapeError`` on
    mismatched batches, a bad background shape or zero channels.
    """
    if tile_size < 1 or chunk_size < 1:
        raise ValueError(f"tile_size and chunk_size must be >= 1, got {tile_size} and {chunk_size}")
    gaussians, camera = broadcast_batches(gaussians, camera)
    channels = gaussians.channels
    if channels < 1:
        raise ShapeError("Gaussians.features: expected at least one channel, got 0")
    dtype, device = gaussians.means.dtype, gaussians.means.device
    if background is None:
        background = torch.zeros(channels, dtype=dtype, device=device)
    elif background.shape != (channels,):
        raise ShapeError(f"background: expected shape [{channels}], got {list(background.shape)}")
    check_finite(gaussians, camera, background)
    background = background.to(dtype=dtype, device=device)  # [C]

    width, height = camera.width, camera.height
    proj = project_gaussians(
        gaussians.means,
        gaussians.quats,
        gaussians.scales,
        camera.world_to_camera.to(device),
        camera.intrinsics.to(device),
        width,
        height,
        near=near,
        eps2d=EPS2D,
    )
    planes = [
        _render_camera(
            means2d=proj.means2d[b],
            conics=proj.conics[b],
            depths=proj.depths[b],
            radii=proj.radii[b],
            valid=proj.valid[b],
            opacities=gaussians.opacities[b],
            features=gaussians.features[b],
            width=width,
            height=height,
            tile_size=tile_size,
            chunk_size=chunk_size,
        )
        for b in range(camera.batch_size)
    ]
    out = torch.stack(planes)  # [B, H, W, C + 2]: accumulated features, accumulated depth, T
    acc, depth, trans = out[..., :channels], out[..., channels], out[..., channels + 1]
    features = acc + trans[..., None] * background  # [B, H, W, C]
    return Render(
        features=features.permute(0, 3, 1, 2).contiguous(),
        alpha=(1.0 - trans)[:, None],
        depth=depth[:, None].contiguous(),
    )


def _bin_to_tiles(
    means2d: Tensor,  # [N, 2]
    radii: Tensor,  # [N, 2] int
    valid: Tensor,  # [N] bool
    depths: Tensor,  # [N]
    tile_size: int,
    tiles_x: int,
    tiles_y: int,
) -> tuple[Tensor, Tensor]:
    """Per-tile lists of Gaussian indices, each sorted front to back.

    Returns ``ids`` [M] long (Gaussian indices, grouped by tile, row-major tile order, depth
    order within a tile, ties by index) and ``offsets`` [tiles_y * tiles_x + 1] long (tile ``t``
    owns ``ids[offsets[t]:offsets[t + 1]]``). A Gaussian is listed in every tile whose pixel
    range its box ``mean2d +- radius`` reaches (a superset of the tiles with a pixel centre in it).
    """
    with torch.no_grad():
        idx = valid.nonzero()[:, 0]  # [K] ascending
        idx = idx[torch.sort(depths[idx], stable=True).indices]  # [K] front to back, ties by index
        m = means2d[idx].detach()  # [K, 2]
        r = radii[idx].to(m.dtype)  # [K, 2]
        top = torch.tensor([tiles_x - 1, tiles_y - 1], device=m.device)
        lo = torch.minimum(torch.floor((m - r) / tile_size).long().clamp(min=0), top)  # [K, 2]
        hi = torch.minimum(torch.floor((m + r) / tile_size).long().clamp(min=0), top)  # [K, 2]
        span = hi - lo + 1  # [K, 2] tiles along x, y
        count = span[:, 0] * span[:, 1]  # [K]
        owner = torch.repeat_interleave(torch.arange(idx.numel(), device=m.device), count)  # [M]
        first = torch.cumsum(count, 0) - count  # [K] position of each Gaussian's first pair
        local = torch.arange(owner.numel(), device=m.device) - first[owner]  # [M]
        tx = lo[owner, 0] + local % span[owner, 0]
        ty = lo[owner, 1] + local // span[owner, 0]
        tile, order = torch.sort(ty * tiles_x + tx, stable=True)  # stable keeps depth order
        ids = idx[owner[order]]  # [M]
        per_tile = torch.bincount(tile, minlength=tiles_x * tiles_y)  # [T]
        offsets = torch.cat([per_tile.new_zeros(1), torch.cumsum(per_tile, 0)])  # [T + 1]
    return ids, offsets


def _render_camera(
    means2d: Tensor,  # [N, 2]
    conics: Tensor,  # [N, 3]
    depths: Tensor,  # [N]
    radii: Tensor,  # [N, 2] int
    valid: Tensor,  # [N] bool
    opacities: Tensor,  # [N]
    features: Tensor,  # [N, C]
    width: int,
    height: int,
    tile_size: int,
    chunk_size: int,
) -> Tensor:  # [H, W, C + 2]: accumulated features, accumulated depth, final transmittance
    """Composite one camera's image tile by tile."""
    dtype, device = means2d.dtype, means2d.device
    channels = features.shape[1]
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    ids, offsets = _bin_to_tiles(means2d, radii, valid, depths, tile_size, tiles_x, tiles_y)
    offsets = offsets.tolist()
    # One gather per attribute for all (tile, Gaussian) pairs; each tile then takes a slice.
    pair_means2d, pair_conics = means2d[ids], conics[ids]  # [M, 2], [M, 3]
    pair_opacities, pair_depths = opacities[ids], depths[ids]  # [M], [M]
    pair_features = features[ids]  # [M, C]

    # Pixel centres of a tile relative to its corner, row-major: [P, 2] with P = tile_size^2.
    ramp = torch.arange(tile_size, dtype=dtype, device=device) + 0.5
    grid_y, grid_x = torch.meshgrid(ramp, ramp, indexing="ij")
    local_centres = torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=-1)  # [P, 2]
    empty = torch.zeros(tile_size * tile_size, channels + 2, dtype=dtype, device=device)
    empty[:, -1] = 1.0  # nothing blended: T = 1

    tiles: list[Tensor] = []
    for t in range(tiles_x * tiles_y):
        start, end = offsets[t], offsets[t + 1]
        if start == end:
            tiles.append(empty)
            continue
        corner = torch.tensor(
            [(t % tiles_x) * tile_size, (t // tiles_x) * tile_size], dtype=dtype, device=device
        )
        tiles.append(
            _composite(  # this tile's Gaussians, front to back
                centres=local_centres + corner,
                means2d=pair_means2d[start:end],
                conics=pair_conics[start:end],
                opacities=pair_opacities[start:end],
                features=pair_features[start:end],
                depths=pair_depths[start:end],
                chunk_size=chunk_size,
            )
        )
    image = torch.stack(tiles).reshape(tiles_y, tiles_x, tile_size, tile_size, channels + 2)
    image = image.permute(0, 2, 1, 3, 4).reshape(tiles_y * tile_size, tiles_x * tile_size, channels + 2)
    return image[:height, :width]  # tiles on the right and bottom edges may overhang


def _composite(
    centres: Tensor,  # [P, 2] pixel centres (x, y)
    means2d: Tensor,  # [K, 2] sorted front to back
    conics: Tensor,  # [K, 3]
    opacities: Tensor,  # [K]
    features: Tensor,  # [K, C]
    depths: Tensor,  # [K]
    chunk_size: int,
) -> Tensor:  # [P, C + 2]: accumulated features, accumulated depth, final transmittance
    """Front-to-back blending of K depth-sorted Gaussians over P pixels, in chunks of Gaussians."""
    num_pixels = centres.shape[0]
    trans = centres.new_ones(num_pixels)  # [P] transmittance so far
    stopped = torch.zeros(num_pixels, dtype=torch.bool, device=centres.device)  # [P]
    acc = centres.new_zeros(num_pixels, features.shape[1])  # [P, C]
    acc_depth = centres.new_zeros(num_pixels)  # [P]
    for s in range(0, means2d.shape[0], chunk_size):
        m, q = means2d[s : s + chunk_size], conics[s : s + chunk_size]  # [k, 2], [k, 3]
        dx = centres[:, 0:1] - m[:, 0]  # [P, k]
        dy = centres[:, 1:2] - m[:, 1]  # [P, k]
        sigma = 0.5 * (q[:, 0] * dx * dx + q[:, 2] * dy * dy) + q[:, 1] * dx * dy  # [P, k]
        # Capping sigma changes no alpha that survives the 1/255 test (exp(-50) ~ 2e-22), and
        # keeps exp off the slow x86 path for underflowing results (about 10x slower).
        alpha = opacities[s : s + chunk_size] * torch.exp(-sigma.clamp(max=SIGMA_CAP))  # [P, k]
        alpha = torch.clamp(alpha, max=ALPHA_MAX)
        alpha = torch.where((sigma >= 0) & (alpha >= ALPHA_MIN), alpha, torch.zeros_like(alpha))
        # T before Gaussian i is column i, after it column i + 1 (left-to-right products).
        t_run = torch.cumprod(torch.cat([trans[:, None], 1.0 - alpha], dim=1), dim=1)  # [P, k + 1]
        with torch.no_grad():
            blended = (t_run[:, 1:] > T_MIN) & ~stopped[:, None]  # [P, k], a prefix of each row
            count = blended.sum(dim=1)  # [P]
            stopped = stopped | (t_run[:, -1] <= T_MIN)
        weights = torch.where(blended, alpha * t_run[:, :-1], torch.zeros_like(alpha))  # [P, k]
        acc = acc + weights @ features[s : s + chunk_size]
        acc_depth = acc_depth + weights @ depths[s : s + chunk_size]
        trans = t_run.gather(1, count[:, None])[:, 0]  # T after the last blended Gaussian
        if bool(stopped.all()):
            break
    return torch.cat([acc, acc_depth[:, None], trans[:, None]], dim=1)


class TorchTilesConfig(RasterizerConfig):
    """The pure-torch reference rasterizer: slow, readable, differentiable, any channel count."""

    name: Literal["torch-tiles"] = "torch-tiles"
    tile_size: int = Field(16, ge=1, le=256)
    """Side of the square pixel tiles composited together; changes speed and memory, not the image."""
    near_plane: float = Field(0.01, gt=0.0)
    """Gaussians whose camera-space z is at or below this (model units) are not drawn."""


class TorchTilesRasterizer(torch.nn.Module):
    """``Rasterizer`` component wrapping ``rasterize_tiles`` (no weights)."""

    def __init__(self, config: TorchTilesConfig, context: BuildContext) -> None:
        super().__init__()
        self.config = config
        self.tile_size = config.tile_size
        self.near_plane = config.near_plane

    def forward(
        self,
        gaussians: Gaussians,  # [B, N]
        camera: Camera,  # [B]
        background: Tensor | None = None,  # [C] or None (zeros)
    ) -> Render:
        return rasterize_tiles(gaussians, camera, background, tile_size=self.tile_size, near=self.near_plane)


@hookimpl
def gshead_register_rasterizers(register):
    register.add(TorchTilesConfig, TorchTilesRasterizer)
