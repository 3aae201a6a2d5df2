"""``mesh-anchored``: static Gaussians anchored on the head model's surface at the source identity.

The static half of the reconstruction/reenactment separated method (``light-control`` makes the
dynamic half). When the lifter is built, ``face_motion`` (``gshead.plugins._shared.face_motion``)
measures which triangles of the head model move with expression; the lifter keeps those whose
motion is at most ``motion_threshold`` (the moving ones are the driver's; ``motion_threshold:
null`` keeps every triangle) and puts ``anchors_per_face`` seeded barycentric points on each
(``seeded_anchors``).

At reconstruction the head model is evaluated for the source portrait, and the surface-Gaussian
code shared with the driver (``gshead.plugins._shared.surface``: ``AnchorHead`` and
``surface_gaussians``, documented there) predicts each anchor's Gaussian from the encoder features
sampled at its projection: colour, the other feature channels, opacity, scales, a rotation in the
triangle's frame and a small offset along the face normal. Untrained, colour is the sampled image
colour, opacity ``initial_opacity``, rotation the triangle's frame and the offset zero. With
``appearance_prior`` (default on), anchors the portrait does not show (hidden in the source view
or facing away from it: under the chin, the far side of a turned head) read the appearance prior's
colour instead of the pixel in front of them (``gshead.plugins._shared.appearance``).

Positions lie on the head mesh of the source *identity* with neutral expression, jaw and eyes
(``neutral_face``: static Gaussians never move, so they sit where a neutral face puts them);
colours and features are sampled where the same surface points appear in the portrait, i.e. on
the mesh posed with the source's full parameters. The two differ only on faces below the motion
threshold.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from gshead.core.components import BuildContext
from gshead.core.config import LifterConfig
from gshead.core.errors import ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, FeatureMaps, Gaussians, HeadParams
from gshead.plugins._shared.face_motion import face_motion
from gshead.plugins._shared.surface import (
    AnchorHead,
    SurfaceGaussianSettings,
    module_prior,
    seeded_anchors,
    surface_gaussians,
)


def neutral_face(source: HeadParams) -> HeadParams:
    """``source`` with expression, jaw and eyes zeroed (identity and pose kept)."""
    return source.replace(
        expression=torch.zeros_like(source.expression),
        jaw=torch.zeros_like(source.jaw),
        eyes=torch.zeros_like(source.eyes),
    )


# ------------------------------------------------------------------ the lifter
class MeshAnchoredConfig(LifterConfig, SurfaceGaussianSettings):
    """Static Gaussians on the head model's non-moving triangles, attributes from sampled features."""

    test_fields: ClassVar[dict[str, Any]] = {"anchors_per_face": 1}
    pipeline_shared: ClassVar[tuple[str, ...]] = ("motion_threshold",)

    name: Literal["mesh-anchored"] = "mesh-anchored"
    anchors_per_face: int = Field(2, ge=1, le=64)
    """Gaussians per triangle: the centroid plus seeded uniform points (dense: 4 or more)."""
    motion_threshold: float | None = Field(0.01, gt=0.0)
    """Triangles moving more than this fraction of the head's size under the expression probes are
    left to the driver; null anchors on every triangle. Shared with the driver's
    ``motion_threshold`` (``light-control``): the pipeline refuses two different values, null
    included, so static and dynamic Gaussians partition the mesh (null would put never-moving
    Gaussians on the moving triangles); null suits drivers without one (``mesh-bound``)."""
    hidden: int = Field(64, ge=4, le=1024)
    """Width of the per-anchor MLP."""
    image_layer: int = Field(0, ge=0, le=512)
    """R > 0 adds an R x R grid of pixel-aligned Gaussians for what the head mesh does not cover
    (hair, neck, torso; with ``background: lifted`` the background too), on a shell at the depth
    of the mesh's outline (``gshead.plugins.lifters._image_layer``); 0: the mesh's Gaussians only."""
    image_layer_behind: float = Field(0.05, ge=0.0, le=1.0)
    """How far the image layer sits behind the mesh's outline, in head widths."""


class MeshAnchoredLifter(nn.Module):
    """FeatureMaps [B] + source [B] + camera [B or 1] -> static Gaussians [B, Ns] on the source head."""

    def __init__(self, config: MeshAnchoredConfig, context: BuildContext) -> None:
        super().__init__()
        if context.head_model is None:
            raise ValueError("mesh-anchored needs a head model in its build context")
        self.config = config
        # Shared with the pipeline, not a submodule: its buffers are not the lifter's weights.
        self.__dict__["head_model"] = context.head_model
        self.head = AnchorHead(
            context.feature_channels,
            context.encoder_channels,
            context.encoder_global_channels,
            config.hidden,
            config.initial_opacity,
        )
        faces = context.head_model.faces
        motion = None
        if config.motion_threshold is None:
            keep = torch.arange(faces.shape[0])
        else:
            motion = face_motion(context.head_model)  # [F, 3]
            keep = (motion.amax(1) <= config.motion_threshold).nonzero()[:, 0]
        if config.appearance_prior:  # the appearance prior's tables (non-persistent buffers)
            module_prior(self, context.head_model, motion)
        face_index, bary = seeded_anchors(keep, config.anchors_per_face, config.seed)
        self.image_layer = None
        if config.image_layer:
            from gshead.plugins.lifters._image_layer import ImageLayer

            self.image_layer = ImageLayer(
                config.image_layer, context.feature_channels, context.encoder_channels[0],
                context.encoder_global_channels, config.hidden, config.initial_opacity,
                behind=config.image_layer_behind,
            )  # fmt: skip
        self.register_buffer("face_index", face_index, persistent=False)  # [Ns]
        self.register_buffer("barycentric", bary, persistent=False)  # [Ns, 3]

    @property
    def count(self) -> int:
        """Number of mesh-anchored Gaussians this lifter makes (the image layer adds its own after them,
        a number that depends on the portrait)."""
        return self.face_index.shape[0]

    def forward(self, features: FeatureMaps, source: HeadParams, camera: Camera) -> Gaussians:
        hm = self.head_model
        b = features.image.shape[0]
        if source.batch_size != b or camera.batch_size not in (1, b):
            raise ShapeError(
                f"mesh-anchored: feature batch {b}, source batch {source.batch_size}, camera batch {camera.batch_size}"
            )
        place = hm(neutral_face(source)).vertices  # [B, V, 3] source identity, neutral face
        see = hm(source).vertices  # [B, V, 3] as in the portrait
        c = self.config
        gaussians, *_ = surface_gaussians(
            self.head, features, camera, self.face_index, self.barycentric, place, see, hm.faces,
            c.anchors_per_face, c.size, c.thickness, c.max_offset, c.max_log_scale,
            module_prior(self, hm) if c.appearance_prior else None,
        )  # fmt: skip
        if self.image_layer is not None:
            gaussians = Gaussians.cat([gaussians, self.image_layer(features, camera, see, hm.faces)])
        return gaussians


@hookimpl
def gshead_register_lifters(register) -> None:
    register.add(MeshAnchoredConfig, MeshAnchoredLifter)


__all__ = ["MeshAnchoredConfig", "MeshAnchoredLifter", "neutral_face"]
