"""What the rasterizers share: the pure-torch projection of 3D Gaussians to the image plane,
its low-pass constant ``EPS2D``, and the input handling every rasterizer does first
(``broadcast_batches``, ``check_finite``).

Everything here follows gsplat's pinhole conventions (``fully_fused_projection``), so a
rasterizer built on it matches gsplat up to float rounding:

- camera-space mean ``t = R @ mu + T`` from ``world_to_camera``; Gaussians with ``t.z <= near``
  are culled (there is no far plane);
- 3D covariance ``Sigma = R(q) S S R(q)^T`` with ``q = (w, x, y, z)`` normalised
  (``gshead.core.geometry.quat_to_rotmat``; a zero quaternion gives the identity, as in gsplat)
  and ``S = diag(scales)``;
- EWA: ``Sigma2d = J W Sigma W^T J^T + eps2d * I`` (``eps2d = EPS2D = 0.3`` pixels^2 in every
  rasterizer) with the perspective Jacobian
  ``J = [[fx/z, 0, -fx*x/z^2], [0, fy/z, -fy*y/z^2]]``, where ``x/z`` and ``y/z`` are first clamped
  to the field of view widened by 30% on each side (``cx/fx + 0.3*tan_fovx`` to the left,
  ``(W-cx)/fx + 0.3*tan_fovx`` to the right, ``tan_fovx = 0.5*W/fx``; likewise for y);
- ``mean2d = (fx*x/z + cx, fy*y/z + cy)`` from the *unclamped* mean (intrinsics skew ignored);
- ``conic = (Sigma2d[1,1], -Sigma2d[0,1], Sigma2d[0,0]) / det`` (det clamped at 1e-10);
- per-axis radius ``ceil(3.33 * sqrt(Sigma2d[i,i]))``: beyond it ``alpha < 1/255`` for any opacity
  <= 1, so the rendered image cannot depend on how pixels are grouped into tiles;
- a Gaussian is valid when it is in front of the near plane and its box
  ``mean2d +- radius`` overlaps the open image rectangle ``(0, W) x (0, H)``; invalid ones get
  radii 0 (as in gsplat).

Pixel ``(px, py)`` has its centre at ``(px + 0.5, py + 0.5)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gshead.core.errors import GsheadError, ShapeError
from gshead.core.geometry import quat_to_rotmat
from gshead.core.types import Camera, Gaussians

__all__ = [
    "EPS2D",
    "RADIUS_SIGMAS",
    "Projected",
    "broadcast_batches",
    "check_finite",
    "project_gaussians",
    "quat_scale_to_covariance",
]

#: Radius of a Gaussian's screen box in standard deviations: sqrt(2 ln 255) = 3.329 rounded up.
RADIUS_SIGMAS = 3.33
EPS2D = 0.3  # low-pass filter added to every 2D covariance (pixels^2), by every rasterizer


@dataclass(frozen=True)
class Projected:
    """Screen-space Gaussians for a batch of ``B`` cameras (one row per camera)."""

    means2d: Tensor  # [B, N, 2] pixel coordinates (x right, y down) of the projected centres
    conics: Tensor  # [B, N, 3] inverse 2D covariance (a, b, c): sigma = 0.5*(a dx^2 + c dy^2) + b dx dy
    depths: Tensor  # [B, N] camera-space z of the centres (also for culled Gaussians)
    radii: Tensor  # [B, N, 2] int32 half-extents of the screen box in pixels (x, y); 0 when culled
    valid: Tensor  # [B, N] bool: in front of the near plane and the box overlaps the image


def quat_scale_to_covariance(quats: Tensor, scales: Tensor) -> Tensor:
    """3D covariances ``R(q) S S R(q)^T`` [..., 3, 3].

    ``quats``: [..., 4] (w, x, y, z), any norm; ``scales``: [..., 3] standard deviations.
    """
    m = quat_to_rotmat(quats) * scales[..., None, :]  # [..., 3, 3] = R @ diag(s)
    return m @ m.transpose(-1, -2)  # [..., 3, 3]


def project_gaussians(
    means: Tensor,  # [B, N, 3] world space
    quats: Tensor,  # [B, N, 4] (w, x, y, z)
    scales: Tensor,  # [B, N, 3]
    world_to_camera: Tensor,  # [B, 4, 4] OpenCV
    intrinsics: Tensor,  # [B, 3, 3] pixels
    width: int,
    height: int,
    near: float = 0.01,
    eps2d: float = EPS2D,
) -> Projected:
    """Project Gaussians into each of ``B`` cameras (conventions in the module docstring).

    Differentiable w.r.t. ``means``, ``quats`` and ``scales`` (radii and ``valid`` are discrete).
    Culled Gaussians get finite values and zero gradients (no NaN leaks into backward).
    """
    dtype = means.dtype
    w2c = world_to_camera.to(dtype)  # [B, 4, 4]
    k = intrinsics.to(dtype)  # [B, 3, 3]
    rot_c = w2c[:, :3, :3]  # [B, 3, 3]

    t = torch.einsum("bij,bnj->bni", rot_c, means) + w2c[:, None, :3, 3]  # [B, N, 3]
    cov = quat_scale_to_covariance(quats, scales)  # [B, N, 3, 3]
    cov_c = torch.einsum("bij,bnjk,blk->bnil", rot_c, cov, rot_c)  # [B, N, 3, 3]

    depths = t[..., 2]  # [B, N]
    in_front = depths > near  # [B, N]
    # Culled Gaussians may sit at z = 0: divide by a safe z so neither values nor grads are NaN.
    z = torch.where(in_front, depths, torch.ones_like(depths))  # [B, N]

    fx, fy = k[:, 0, 0, None], k[:, 1, 1, None]  # [B, 1]
    cx, cy = k[:, 0, 2, None], k[:, 1, 2, None]  # [B, 1]
    tan_fovx = 0.5 * width / fx  # [B, 1]
    tan_fovy = 0.5 * height / fy  # [B, 1]
    u = torch.clamp(t[..., 0] / z, min=-(cx / fx + 0.3 * tan_fovx), max=(width - cx) / fx + 0.3 * tan_fovx)
    v = torch.clamp(t[..., 1] / z, min=-(cy / fy + 0.3 * tan_fovy), max=(height - cy) / fy + 0.3 * tan_fovy)
    tx, ty = z * u, z * v  # [B, N] mean clamped into the widened frustum (Jacobian only)
    zero = torch.zeros_like(z)
    jac = torch.stack(
        [fx / z, zero, -fx * tx / (z * z), zero, fy / z, -fy * ty / (z * z)], dim=-1
    ).reshape(*z.shape, 2, 3)  # [B, N, 2, 3]
    cov2d = jac @ cov_c @ jac.transpose(-1, -2)  # [B, N, 2, 2]
    cov2d = cov2d + eps2d * torch.eye(2, dtype=dtype, device=means.device)

    det = (cov2d[..., 0, 0] * cov2d[..., 1, 1] - cov2d[..., 0, 1] * cov2d[..., 1, 0]).clamp(min=1e-10)
    conics = torch.stack(
        [cov2d[..., 1, 1] / det, -0.5 * (cov2d[..., 0, 1] + cov2d[..., 1, 0]) / det, cov2d[..., 0, 0] / det],
        dim=-1,
    )  # [B, N, 3]
    means2d = torch.stack([fx * t[..., 0] / z + cx, fy * t[..., 1] / z + cy], dim=-1)  # [B, N, 2]

    with torch.no_grad():
        radius = torch.ceil(
            RADIUS_SIGMAS * torch.sqrt(torch.stack([cov2d[..., 0, 0], cov2d[..., 1, 1]], dim=-1))
        )  # [B, N, 2] float
        inside = (
            (means2d[..., 0] + radius[..., 0] > 0)
            & (means2d[..., 0] - radius[..., 0] < width)
            & (means2d[..., 1] + radius[..., 1] > 0)
            & (means2d[..., 1] - radius[..., 1] < height)
        )  # [B, N]
        valid = in_front & (det > 0) & inside  # [B, N]
        radii = torch.where(valid[..., None], radius, torch.zeros_like(radius)).to(torch.int32)
    return Projected(means2d=means2d, conics=conics, depths=depths, radii=radii, valid=valid)


def check_finite(
    gaussians: Gaussians, camera: Camera | None = None, background: Tensor | None = None
) -> None:
    """Raise ``GsheadError`` naming the first tensor that holds NaN or inf.

    ``gaussians`` [B, N]; ``camera`` [B] (optional); ``background`` [C] (optional). One
    synchronising reduction per tensor; call it once per render, before any work.
    """
    named: list[tuple[str, Tensor]] = [
        ("Gaussians.means", gaussians.means),
        ("Gaussians.quats", gaussians.quats),
        ("Gaussians.scales", gaussians.scales),
        ("Gaussians.opacities", gaussians.opacities),
        ("Gaussians.features", gaussians.features),
    ]
    if camera is not None:
        named.append(("Camera.world_to_camera", camera.world_to_camera))
        named.append(("Camera.intrinsics", camera.intrinsics))
    if background is not None:
        named.append(("background", background))
    for name, tensor in named:
        if tensor.numel() and not bool(torch.isfinite(tensor.detach()).all()):
            raise GsheadError(f"{name} contains NaN or inf")


def broadcast_batches(gaussians: Gaussians, camera: Camera) -> tuple[Gaussians, Camera]:
    """Match the batch sizes of Gaussians and cameras (a batch of one broadcasts); ``ShapeError``
    for two different sizes, neither of them 1."""
    bg, bc = gaussians.batch_size, camera.batch_size
    if bg == bc:
        return gaussians, camera
    if bg == 1:
        return gaussians.expand(bc), camera
    if bc == 1:
        return gaussians, camera.expand(bg)
    raise ShapeError(f"rasterizer: {bg} Gaussian batches but {bc} cameras; expected equal sizes or 1")
