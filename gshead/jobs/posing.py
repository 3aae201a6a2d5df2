"""Posing an avatar's Gaussians in world space, for a file or a 3D view (no camera, no render).

Driving (``LoadedAvatar.session``) applies the head pose as camera motion. A PLY file
(``gshead export``) or a 3D viewer (``gshead view``) has no camera, so here the pose moves the
Gaussians themselves: means rotated and translated, rotations composed. With a zero pose the head
sits in its model space (y up, looking along +z).

- ``posed_in_world``: Gaussians [B, N] moved by the head pose of head parameters [B].
- ``export_gaussians``: an avatar's static plus driven Gaussians [1, N] for one set of head
  parameters (the avatar's own identity), posed in world space.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from gshead.core.errors import InputError
from gshead.core.geometry import quat_multiply, quat_xyzw_to_wxyz
from gshead.core.types import Gaussians, HeadParams

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
        everything = Gaussians.cat([avatar.static, posed])  # [1, Ns + M] in head space
        return posed_in_world(everything, params)


__all__ = ["export_gaussians", "posed_in_world"]
