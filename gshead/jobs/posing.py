"""Posing an avatar's Gaussians in world space, for a file or a 3D view (no camera, no render).

Driving (``LoadedAvatar.session``) applies the head pose as camera motion. A PLY file
(``gshead export``) or a 3D viewer (``gshead view``) has no camera, so here the pose moves the
Gaussians themselves: means rotated and translated, rotations composed. With a zero pose the head
sits in its model space (y up, looking along +z).

- ``posed_in_world``: Gaussians [B, N] moved by the head pose of head parameters [B].
- ``export_gaussians``: an avatar's static plus driven Gaussians [1, N] for one set of head
  parameters (the avatar's own identity), posed in world space.
- ``to_export_frame``: Gaussians moved from gshead's world (y up, the face looking along +z) into
  a file's convention (``UP_CONVENTIONS``) and scaled; ``export_camera``: a camera as the small
  JSON-ready dict written beside an export, in that same convention and scale.

Export conventions (``--up`` of ``gshead export``):

- ``-y`` (the default): the original 3DGS tools' frame, the OpenCV camera frame (x right, y down,
  z forward), which SuperSplat and gsplat.js assume. gshead's world is turned 180 degrees about x,
  (x, y, z) -> (x, -y, -z): the top of the head has the smallest y and the face looks towards -z,
  at a camera that looks along +z. The avatar's source camera becomes an identity-rotation OpenCV
  camera behind it.
- ``y``: gshead's own world, y up, the face looking along +z (three.js-style y-up viewers).

Units are gshead's: metres (a head is about 0.2-0.3 m across). ``scale`` multiplies positions,
Gaussian sizes and the camera position alike, so the picture from the camera is unchanged.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from gshead.core.errors import InputError
from gshead.core.geometry import quat_multiply, quat_xyzw_to_wxyz, rotmat_to_quat
from gshead.core.types import Camera, Gaussians, HeadParams

if TYPE_CHECKING:
    from gshead.io.avatar import LoadedAvatar


def posed_in_world(gaussians: Gaussians, params: HeadParams) -> Gaussians:
    """``gaussians`` [B, N] moved by the head pose of ``params`` [B]: x -> R x + t, q -> q_R q."""
    import roma

    rotation = params.rotation.to(gaussians.means.dtype)  # [B, 3] axis-angle
    r = roma.rotvec_to_rotmat(rotation)  # [B, 3, 3]
    t = params.translation.to(gaussians.means.dtype)  # [B, 3]
    means = gaussians.means @ r.transpose(1, 2) + t[:, None]  # [B, N, 3]
    q_r = quat_xyzw_to_wxyz(roma.rotvec_to_unitquat(rotation))[:, None]  # [B, 1, 4] (w, x, y, z)
    quats = torch.nn.functional.normalize(quat_multiply(q_r, gaussians.quats), dim=-1)
    return gaussians.replace(means=means, quats=quats)


def export_gaussians(loaded: LoadedAvatar, params: HeadParams) -> Gaussians:
    """Static + driven Gaussians [1, N] of ``loaded`` for head parameters ``params`` [1], in world
    space (head pose applied to the Gaussians). The avatar's identity replaces ``params.identity``."""
    avatar = loaded.avatar
    if params.batch_size != 1:
        raise InputError(f"export: expected one set of head parameters, got {params.batch_size}")
    params = params.replace(identity=avatar.source.identity.expand(1, -1))
    with torch.no_grad():
        posed = loaded.driver.drive(avatar, params)  # [1, M]
        static = avatar.static
        if avatar.body is not None:  # torso: still: the torso where the source pose put it
            from gshead.core.geometry import torso_held

            static = torso_held(static, avatar.body, params.pose_matrix(), avatar.source.pose_matrix())
        everything = Gaussians.cat([static, posed])  # [1, Ns + M] in head space
        return posed_in_world(everything, params)


UP_CONVENTIONS = ("-y", "y")
"""``-y``: OpenCV / original 3DGS (x right, y down, z forward), the default; ``y``: gshead's y up."""

_FRAMES = {
    "-y": ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0)),  # 180 degrees about x
    "y": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0)),
}


def frame_matrix(up: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The rotation [3, 3] from gshead's world into the export convention ``up``."""
    if up not in _FRAMES:
        raise InputError(f"--up {up!r}: expected one of {', '.join(UP_CONVENTIONS)}")
    return torch.tensor(_FRAMES[up], dtype=dtype)


def check_scale(scale: float) -> float:
    """``scale`` as a float; InputError unless finite and within [1e-6, 1e6]."""
    scale = float(scale)
    if not (math.isfinite(scale) and 1e-6 <= scale <= 1e6):
        raise InputError(f"--scale {scale:g}: expected a positive factor between 1e-06 and 1e+06")
    return scale


def to_export_frame(gaussians: Gaussians, up: str = "-y", scale: float = 1.0) -> Gaussians:
    """``gaussians`` [B, N] in gshead's world turned into convention ``up`` and scaled by ``scale``:
    means -> scale * M x, quaternions -> q_M q (renormalised), sizes -> scale * s."""
    scale = check_scale(scale)
    dtype = gaussians.means.dtype
    m = frame_matrix(up, torch.float64)
    means = (gaussians.means.to(torch.float64) @ m.T * scale).to(dtype)
    q_m = rotmat_to_quat(m).to(dtype)  # [4] (w, x, y, z)
    quats = torch.nn.functional.normalize(quat_multiply(q_m, gaussians.quats), dim=-1)
    return gaussians.replace(means=means, quats=quats, scales=gaussians.scales * scale)


def export_camera(camera: Camera, target: torch.Tensor, up: str = "-y", scale: float = 1.0) -> dict:
    """``camera`` [1] (OpenCV camera axes, in gshead's world) as a JSON-ready dict in convention
    ``up`` and scale ``scale``: ``position``, ``target`` (the point on the optical axis at the depth
    of ``target`` [3], gshead's world, usually the head's centre), ``up`` (the image's up
    direction), ``fov_y_degrees``/``fov_x_degrees``, ``width``/``height``, the intrinsics in
    pixels, and ``world_to_camera`` (4x4, row-major, OpenCV camera axes: x right, y down, z forward)."""
    scale = check_scale(scale)
    m = frame_matrix(up, torch.float64)
    w2c = camera.world_to_camera[0].detach().to("cpu", torch.float64)
    k = camera.intrinsics[0].detach().to("cpu", torch.float64)
    rot = w2c[:3, :3] @ m.T  # the exported world -> camera; M is orthonormal
    trans = w2c[:3, 3] * scale
    position = -rot.T @ trans
    forward, image_up = rot[2], -rot[1]  # camera +z, camera -y (y points down in the image)
    centre = m @ target.detach().to("cpu", torch.float64) * scale
    depth = float((centre - position) @ forward)
    depth = depth if depth > 0 else float((centre - position).norm())
    fx, fy, cx, cy = float(k[0, 0]), float(k[1, 1]), float(k[0, 2]), float(k[1, 2])
    matrix = torch.eye(4, dtype=torch.float64)
    matrix[:3, :3], matrix[:3, 3] = rot, trans
    rounded = lambda t: [round(float(v), 9) + 0.0 for v in t]  # + 0.0: no -0.0
    return {
        "convention": "opencv (x right, y down, z forward)" if up == "-y" else "y up, face towards +z",
        "up_axis": up,
        "units": f"metres x {scale:g}",
        "position": rounded(position),
        "target": rounded(position + depth * forward),
        "up": rounded(image_up),
        "fov_y_degrees": round(math.degrees(2 * math.atan(camera.height / (2 * fy))), 6),
        "fov_x_degrees": round(math.degrees(2 * math.atan(camera.width / (2 * fx))), 6),
        "width": camera.width,
        "height": camera.height,
        "fx": fx,
        "fy": fy,
        "cx": cx,
        "cy": cy,
        "world_to_camera": [rounded(row) for row in matrix],
    }


__all__ = [
    "UP_CONVENTIONS",
    "check_scale",
    "export_camera",
    "export_gaussians",
    "frame_matrix",
    "posed_in_world",
    "to_export_frame",
]
