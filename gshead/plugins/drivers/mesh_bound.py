"""``mesh-bound``: the reference driver — Gaussians riding on the head mesh's triangles.

At reconstruction (``prepare``) it places Gaussians on the source head mesh (seeded points per
triangle), flat along each triangle, coloured by the source image at their projections; the
other feature channels come from the encoder's local features through one linear layer. Per
frame (``drive``) it evaluates the head model for the frame's expression, jaw and eyes (the
avatar's identity) and carries each Gaussian with its triangle: position from the binding,
rotation from the triangle's frame. Per-frame work is one head-model evaluation and a gather;
nothing in it depends on the encoder.
"""

from __future__ import annotations

from typing import Literal

import roma
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gshead.core.components import BuildContext
from gshead.core.config import DriverConfig
from gshead.core.geometry import posed_frames
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Avatar, Camera, FeatureMaps, Gaussians, HeadParams, MeshBinding, Rig


class MeshBoundConfig(DriverConfig):
    """Gaussians bound to head-mesh triangles, moved with the mesh."""

    name: Literal["mesh-bound"] = "mesh-bound"
    gaussians_per_face: int = Field(1, ge=1, le=16)
    """Gaussians per triangle: 1 puts one at each centroid, more adds seeded random points."""
    size: float = Field(0.6, gt=0)
    """In-plane standard deviation as a fraction of the triangle's mean edge length."""
    thickness: float = Field(0.3, gt=0, le=1)
    """Standard deviation along the normal, as a fraction of the in-plane one."""
    opacity: float = Field(0.95, gt=0, lt=1)
    """Opacity of every driven Gaussian."""


def rotmat_to_wxyz(rotations: Tensor) -> Tensor:
    """[..., 3, 3] rotation matrices -> [..., 4] unit quaternions (w, x, y, z)."""
    xyzw = roma.rotmat_to_unitquat(rotations)
    return torch.cat([xyzw[..., 3:], xyzw[..., :3]], dim=-1)


def project(points: Tensor, camera: Camera) -> Tensor:
    """World points [B, M, 3] -> pixel coordinates [B, M, 2] (OpenCV pinhole)."""
    cam = points @ camera.world_to_camera[:, :3, :3].transpose(1, 2) + camera.world_to_camera[:, None, :3, 3]
    uvw = cam @ camera.intrinsics.transpose(1, 2)
    return uvw[..., :2] / uvw[..., 2:].clamp(min=1e-6)


def sample_at(image: Tensor, pixels: Tensor, width: int, height: int) -> Tensor:
    """Bilinear samples of ``image`` [B, C, h, w] at ``pixels`` [B, M, 2] given in a width x height
    image's pixel units -> [B, M, C]."""
    grid = torch.stack([pixels[..., 0] / width * 2 - 1, pixels[..., 1] / height * 2 - 1], dim=-1)
    out = F.grid_sample(image, grid[:, None], mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0].transpose(1, 2)


class MeshBoundDriver(nn.Module):
    """See the module docstring."""

    def __init__(self, config: MeshBoundConfig, context: BuildContext) -> None:
        super().__init__()
        if context.head_model is None:
            raise ValueError("mesh-bound needs a head model in its build context")
        self.config = config
        # Shared with the pipeline, not a submodule: its buffers are not the driver's weights.
        self.__dict__["head_model"] = context.head_model
        self.feature_channels = context.feature_channels
        extra = context.feature_channels - 3
        self.extra_features = nn.Linear(context.encoder_channels[0], extra) if extra > 0 else None

    def _anchors(self, faces: int) -> tuple[Tensor, Tensor]:
        """Face index [M] and barycentric weights [M, 3] of the bound points (deterministic)."""
        k = self.config.gaussians_per_face
        face_index = torch.arange(faces).repeat_interleave(k)
        bary = torch.full((faces * k, 3), 1.0 / 3.0)
        if k > 1:
            g = torch.Generator().manual_seed(0)
            r = torch.rand(faces, k - 1, 2, generator=g)
            flip = r.sum(-1, keepdim=True) > 1
            r = torch.where(flip, 1 - r, r)  # uniform on the triangle
            extra = torch.cat([1 - r.sum(-1, keepdim=True), r], dim=-1)
            bary = bary.view(faces, k, 3)
            bary[:, 1:] = extra
            bary = bary.reshape(faces * k, 3)
        return face_index, bary

    def prepare(self, features: FeatureMaps, source: HeadParams, camera: Camera, static: Gaussians) -> Rig:
        hm = self.head_model
        faces = hm.faces
        verts = hm(source).vertices  # [1, V, 3]
        face_index, bary = self._anchors(faces.shape[0])
        binding = MeshBinding(face_index, bary, torch.zeros(face_index.shape[0], 3))
        means, rot = posed_frames(binding, verts, faces)  # [1, M, 3], [1, M, 3, 3]

        tri = verts[0][faces]  # [F, 3, 3]
        edges = (tri - tri.roll(1, dims=1)).norm(dim=-1).mean(-1)  # [F]
        s = self.config.size * edges[face_index]
        scales = torch.stack([s, s, self.config.thickness * s], dim=-1)[None]  # [1, M, 3]

        pixels = project(means, camera)
        rgb = sample_at(features.image, pixels, camera.width, camera.height)  # [1, M, 3]
        parts = [rgb]
        if self.extra_features is not None:
            local = sample_at(features.local[0], pixels, camera.width, camera.height)
            parts.append(torch.sigmoid(self.extra_features(local)))
        dynamic = Gaussians(
            means=means,
            quats=rotmat_to_wxyz(rot),  # rest rotation = the triangle's frame (local rotation identity)
            scales=scales,
            opacities=torch.full(means.shape[:2], self.config.opacity),
            features=torch.cat(parts, dim=-1),
        )
        return Rig(dynamic=dynamic, binding=binding, latent=torch.zeros(1, 0))

    def drive(self, avatar: Avatar, params: HeadParams) -> Gaussians:
        hm = self.head_model
        rig = avatar.rig
        verts = hm(params).vertices  # [B, V, 3]
        means, rot = posed_frames(rig.binding, verts, hm.faces)  # one pass for points and frames
        return rig.dynamic.moved(means, rotmat_to_wxyz(rot))


@hookimpl
def gshead_register_drivers(register) -> None:
    register(MeshBoundConfig, MeshBoundDriver)


__all__ = ["MeshBoundConfig", "MeshBoundDriver", "project", "rotmat_to_wxyz", "sample_at"]
