"""Surface Gaussians: Gaussians anchored at seeded points of a head mesh's triangles, attributes
predicted from the encoder features sampled where the anchors appear in the source portrait.

Shared by the ``mesh-anchored`` lifter (static Gaussians on the triangles that do not move) and the
``light-control`` driver (dynamic Gaussians on the ones that do), so both halves of the separated
method make their Gaussians the same way; ``mesh-bound`` uses ``seeded_anchors`` and ``sample_at``.

Anchors (``seeded_anchors``): ``per_face`` barycentric points on each chosen triangle, the centroid
first, the others seeded uniform points (same inputs, same points).

The per-anchor head (``AnchorHead``): a small MLP that reads, at each anchor's projection into the
source image,

- every level of ``FeatureMaps.local`` (bilinear), each through its own first-layer slice,
- the global token (added once per image as a bias: equal to concatenating it per anchor),
- the source RGB there, and how squarely the surface faces the source camera (a cosine),

and predicts: residual RGB (so channels 0..2 start as the sampled image colour), the other
``C - 3`` feature channels, opacity, a scale per local axis, a rotation in the triangle's frame,
a small offset along the face normal and, optionally, ``extra_outputs`` code channels.

With ``appearance_prior`` (``SurfaceGaussianSettings``, on by default) the colour an anchor hidden
in the source view reads is the appearance prior's (``gshead.plugins._shared.appearance``) instead
of the pixel in front of it; everything else it reads, and every visible anchor, is unchanged.

Untrained, the outputs are exact (the output layer is zero-initialised except the extra feature
channels and the codes, as in ``single-plane``): colour = sampled image colour (the prior's on
hidden anchors), opacity ``initial_opacity``, scales ``size`` x the triangle's mean edge /
sqrt(anchors_per_face) in-plane and ``thickness`` times that along the normal, rotation = the
triangle's frame, no offset (anchors on the surface). ``surface_gaussians`` turns the raw outputs into ``Gaussians``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from gshead.core.errors import ShapeError
from gshead.core.geometry import posed_frames, project_points, quat_to_rotmat, rotmat_to_quat
from gshead.core.types import Camera, FeatureMaps, Gaussians, MeshBinding
from gshead.plugins._shared.appearance import PriorTables, anchor_colours, prior_tables
from gshead.plugins._shared.face_motion import MOUTH, PROBE_ANGLE, face_motion

__all__ = [
    "AnchorHead",
    "SurfaceGaussianSettings",
    "module_prior",
    "sample_at",
    "seeded_anchors",
    "surface_gaussians",
]


def sample_at(image: Tensor, pixels: Tensor, width: int, height: int) -> Tensor:
    """Bilinear samples of ``image`` [B, C, h, w] at ``pixels`` [B, M, 2] given in a width x height
    image's pixel units -> [B, M, C]."""
    grid = torch.stack([pixels[..., 0] / width * 2 - 1, pixels[..., 1] / height * 2 - 1], dim=-1)
    out = F.grid_sample(image, grid[:, None], mode="bilinear", padding_mode="border", align_corners=False)
    return out[:, :, 0].transpose(1, 2)


def seeded_anchors(face_ids: Tensor, per_face: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """``per_face`` points on each of the triangles ``face_ids`` [K]: face index [K*per_face] and
    barycentric weights [K*per_face, 3]. The first point of each triangle is its centroid; the
    others are uniform on the triangle from a generator seeded with ``seed`` (same inputs, same points)."""
    k = face_ids.shape[0]
    bary = torch.full((k, per_face, 3), 1.0 / 3.0)
    if per_face > 1:
        g = torch.Generator().manual_seed(seed)
        r = torch.rand(k, per_face - 1, 2, generator=g)
        r = torch.where(r.sum(-1, keepdim=True) > 1, 1 - r, r)  # uniform on the triangle
        bary[:, 1:] = torch.cat([1 - r.sum(-1, keepdim=True), r], dim=-1)
    return face_ids.long().repeat_interleave(per_face), bary.reshape(k * per_face, 3)


# ------------------------------------------------------------------ the per-anchor head
_RGB, _OPACITY, _SCALE, _QUAT, _OFFSET = 3, 1, 3, 4, 1


class AnchorHead(nn.Module):
    """Per-anchor MLP from sampled encoder features to Gaussian attributes (see the module docstring).

    ``extra_outputs`` more output rows (keeping the default init) are returned as ``code``; the
    ``light-control`` driver uses them as its per-Gaussian latent.
    """

    def __init__(
        self,
        feature_channels: int,
        encoder_channels: tuple[int, ...],
        global_channels: int,
        hidden: int,
        initial_opacity: float,
        extra_outputs: int = 0,
    ) -> None:
        super().__init__()
        if feature_channels < 3:
            raise ShapeError(f"feature_channels is {feature_channels}; expected at least 3 (RGB)")
        if not encoder_channels:
            raise ShapeError("BuildContext.encoder_channels is empty; expected the encoder's channels")
        self.encoder_channels = tuple(encoder_channels)
        self.global_channels = global_channels
        self.extra = feature_channels - 3
        self.codes = extra_outputs
        # First layer, split by input so nothing encoder-sized is concatenated per anchor.
        self.levels = nn.ModuleList(nn.Linear(c, hidden, bias=False) for c in self.encoder_channels)
        self.token = nn.Linear(global_channels, hidden, bias=False) if global_channels else None
        self.pixel = nn.Linear(3 + 1, hidden)  # RGB + facing cosine
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.split = (_RGB, self.extra, _OPACITY, _SCALE, _QUAT, _OFFSET, extra_outputs)
        self.out = nn.Linear(hidden, sum(self.split))
        with torch.no_grad():  # zero every row except the extra features and the codes
            w, b = self.out.weight, self.out.bias
            kept_w, kept_b = w.clone(), b.clone()
            w.zero_()
            b.zero_()
            for start, size in ((_RGB, self.extra), (sum(self.split[:-1]), extra_outputs)):
                w[start : start + size] = kept_w[start : start + size]
                b[start : start + size] = kept_b[start : start + size]
            b[_RGB + self.extra] = math.log(initial_opacity / (1.0 - initial_opacity))

    def forward(
        self,
        features: FeatureMaps,
        pixels: Tensor,
        width: int,
        height: int,
        facing: Tensor,
        rgb: Tensor | None = None,
    ):
        """Raw outputs at ``pixels`` [B, M, 2] of a ``width`` x ``height`` image, ``facing`` [B, M];
        ``rgb`` [B, M, 3] replaces the source colour sampled there when given (the appearance prior).

        Returns (rgb [B, M, 3] sampled (or given) colour, d_rgb [B, M, 3], extra [B, M, C-3], opacity
        logit [B, M], log-scale [B, M, 3], quaternion residual [B, M, 4], normal offset [B, M], code [B, M, K]).
        """
        got = tuple(m.shape[1] for m in features.local)
        if got != self.encoder_channels or features.global_token.shape[1] != self.global_channels:
            raise ShapeError(
                f"built for {self.encoder_channels} local / {self.global_channels} global encoder channels, "
                f"got {got} / {features.global_token.shape[1]}"
            )
        if rgb is None:
            rgb = sample_at(features.image, pixels, width, height)  # [B, M, 3]
        h = self.pixel(torch.cat([rgb, facing[..., None]], dim=-1))  # [B, M, H]
        for level, fmap in zip(self.levels, features.local):
            h = h + level(sample_at(fmap, pixels, width, height))
        if self.token is not None:
            h = h + self.token(features.global_token)[:, None]
        d_rgb, extra, opacity, scale, quat, offset, code = self.out(self.mlp(h)).split(self.split, dim=-1)
        return rgb, d_rgb, extra, opacity[..., 0], scale, quat, offset[..., 0], code


def surface_gaussians(
    head: AnchorHead,
    features: FeatureMaps,
    camera: Camera,
    face_index: Tensor,
    barycentric: Tensor,
    place_vertices: Tensor,
    see_vertices: Tensor,
    faces: Tensor,
    per_face: int,
    size: float,
    thickness: float,
    max_offset: float,
    max_log_scale: float,
    prior: PriorTables | None = None,
    prior_skip: Tensor | None = None,
) -> tuple[Gaussians, MeshBinding, Tensor, Tensor]:
    """Gaussians at the anchors ``face_index`` [M] / ``barycentric`` [M, 3] (shared by lifter and driver).

    Placed on ``place_vertices`` [B, V, 3], features sampled where the anchors of ``see_vertices``
    [B, V, 3] project with ``camera``. With ``prior`` (the head model's ``PriorTables``), anchors
    the source view does not show read the appearance prior's colour instead of the sampled one
    (``gshead.plugins._shared.appearance.anchor_colours``); visible anchors are unchanged, and so
    are the anchors ``prior_skip`` [M] (bool) names. Returns the Gaussians [B, M] (world space), the binding
    (with the predicted normal offsets of batch item 0), the local rotations [B, M, 3, 3] in the
    triangles' frames, and the codes [B, M, K].
    """
    zero = MeshBinding(
        face_index, barycentric.to(place_vertices), torch.zeros_like(barycentric).to(place_vertices)
    )
    seen, seen_rot = posed_frames(zero, see_vertices, faces)  # [B, M, 3], [B, M, 3, 3]
    b = see_vertices.shape[0]
    camera = camera.expand(b)
    centre = torch.linalg.inv(camera.world_to_camera)[:, None, :3, 3]  # [B, 1, 3] camera position
    facing = (F.normalize(centre - seen, dim=-1) * seen_rot[..., 2]).sum(-1)  # [B, M]
    pixels = project_points(seen, camera)
    given = None
    if prior is not None:
        sampled = sample_at(features.image, pixels, camera.width, camera.height)  # [B, M, 3]
        vertex_rgb = sample_at(
            features.image, project_points(see_vertices, camera), camera.width, camera.height
        )  # [B, V, 3]
        given, _ = anchor_colours(
            sampled, seen, facing, face_index, barycentric, see_vertices, vertex_rgb, faces, camera, prior
        )
        if prior_skip is not None:
            given = torch.where(prior_skip.to(given.device)[None, :, None], sampled, given)
    rgb, d_rgb, extra, opacity, log_scale, quat, offset, code = head(
        features, pixels, camera.width, camera.height, facing, rgb=given
    )

    tri = place_vertices[:, faces[face_index]]  # [B, M, 3, 3]
    edge = (tri - tri.roll(1, dims=2)).norm(dim=-1).mean(-1)  # [B, M] mean edge length
    normal_offset = max_offset * edge * torch.tanh(offset)  # [B, M]
    local_offset = torch.stack([torch.zeros_like(normal_offset)] * 2 + [normal_offset], dim=-1)
    binding = MeshBinding(face_index, zero.barycentric, local_offset[0])
    anchors, rot = posed_frames(zero, place_vertices, faces)  # [B, M, 3], [B, M, 3, 3]
    means = anchors + (rot @ local_offset[..., None])[..., 0]  # offsets along each face normal

    s = size * edge / math.sqrt(per_face)  # [B, M]
    initial = torch.stack([s, s, thickness * s], dim=-1)  # [B, M, 3]
    scales = initial * torch.exp(max_log_scale * torch.tanh(log_scale / max_log_scale))
    identity = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=quat.dtype, device=quat.device)
    local_rot = quat_to_rotmat(identity + quat)  # [B, M, 3, 3]
    gaussians = Gaussians(
        means=means,
        quats=rotmat_to_quat(rot @ local_rot),
        scales=scales,
        opacities=torch.sigmoid(opacity),
        features=torch.cat([(rgb + d_rgb).clamp(0.0, 1.0), extra], dim=-1),
    )
    return gaussians, binding, local_rot, code


class SurfaceGaussianSettings(BaseModel):
    """Initial shape of Gaussians anchored on triangles (shared by mesh-anchored and light-control)."""

    model_config = ConfigDict(use_attribute_docstrings=True)
    weights_neutral: ClassVar[tuple[str, ...]] = ("appearance_prior",)
    """Fields that change no weight: pipeline weights load whatever their value (``load_pipeline_weights``)."""

    initial_opacity: float = Field(0.95, gt=0.0, lt=1.0)
    """Opacity of every Gaussian before training."""
    size: float = Field(0.6, gt=0.0)
    """Initial in-plane standard deviation, in mean triangle edges / sqrt(anchors_per_face)."""
    thickness: float = Field(0.3, gt=0.0, le=1.0)
    """Initial standard deviation along the normal, as a fraction of the in-plane one."""
    max_offset: float = Field(0.5, ge=0.0)
    """Largest rest offset along the face normal, in mean triangle edges (tanh-bounded)."""
    max_log_scale: float = Field(2.0, gt=0.0)
    """Bound on |log(scale / initial scale)| (tanh-bounded)."""
    seed: int = 0
    """Seed of the anchor positions inside each triangle (not of the weights)."""
    appearance_prior: bool = True
    """Anchors the portrait does not show (hidden behind other surface in the source view, or facing
    away from it) read a prior colour instead of the source pixel in front of them: a dark cavity
    colour inside the mouth, the mirror-symmetric anchor's colour when that one is visible, else
    the nearest visible colour on the mesh (``gshead.plugins._shared.appearance``); visible anchors
    keep their sampled colour. false: every anchor reads the pixel it projects to."""


@torch.no_grad()
def eyeballs(head_model) -> Tensor:
    """[V] bool: the vertices of ``head_model`` that turn with the eyes (``PROBE_ANGLE`` about both
    axes moves them more than 0.1% of the head's size; the lids do not turn with them)."""
    base = head_model.neutral(1)
    turned = base.replace(eyes=torch.full_like(base.eyes, PROBE_ANGLE))
    moved = (head_model(turned).vertices - head_model(base).vertices)[0].norm(dim=-1)  # [V]
    template = head_model.template
    return moved > 1e-3 * float((template.amax(0) - template.amin(0)).norm())


def module_prior(module: nn.Module, head_model, motion: Tensor | None = None) -> PriorTables:
    """The appearance prior's tables of ``head_model``, kept on ``module`` as non-persistent buffers
    (``prior_mouth``...: never in the weights; they follow ``module.to``) and made on the first call,
    from the head model's ``face_motion`` table ``motion`` [F, 3] (computed when None)."""
    keys = module.__dict__.get("_prior_fields")
    if keys is None:
        if motion is None:
            motion = face_motion(head_model)
        tables = prior_tables(head_model.template, head_model.faces, motion[:, MOUTH], eyeballs(head_model))
        device = head_model.template.device
        for key, value in tables.tensors().items():
            module.register_buffer(f"prior_{key}", value.to(device), persistent=False)
        keys = module.__dict__["_prior_fields"] = tuple(tables.tensors())
    return PriorTables(**{key: getattr(module, f"prior_{key}") for key in keys})
