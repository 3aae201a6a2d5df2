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

import torch
from pydantic import Field
from torch import Tensor, nn

from gshead.core.components import BuildContext
from gshead.core.config import DriverConfig
from gshead.core.geometry import posed_frames, project_points, rotmat_to_quat
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Avatar, Camera, FeatureMaps, Gaussians, HeadParams, MeshBinding, Rig
from gshead.plugins._shared.surface import sample_at, seeded_anchors


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
        """Face index [M] and barycentric weights [M, 3] of the bound points (deterministic): the
        centroid of every triangle, then ``gaussians_per_face - 1`` points seeded with 0."""
        return seeded_anchors(torch.arange(faces), self.config.gaussians_per_face, seed=0)

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

        pixels = project_points(means, camera)
        rgb = sample_at(features.image, pixels, camera.width, camera.height)  # [1, M, 3]
        parts = [rgb]
        if self.extra_features is not None:
            local = sample_at(features.local[0], pixels, camera.width, camera.height)
            parts.append(torch.sigmoid(self.extra_features(local)))
        dynamic = Gaussians(
            means=means,
            quats=rotmat_to_quat(rot),  # rest rotation = the triangle's frame (local rotation identity)
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
        return rig.dynamic.moved(means, rotmat_to_quat(rot))


@hookimpl
def gshead_register_drivers(register) -> None:
    register.add(MeshBoundConfig, MeshBoundDriver)


__all__ = ["MeshBoundConfig", "MeshBoundDriver"]
