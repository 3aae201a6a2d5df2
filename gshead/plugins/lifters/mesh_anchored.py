"""``mesh-anchored``: static Gaussians anchored on the head model's surface at the source identity.

The static half of the reconstruction/reenactment separated method (``light-control`` makes the
dynamic half). At reconstruction the head model is evaluated for the source portrait, and
``anchors_per_face`` seeded barycentric points are placed on every triangle that does not move
with expression (see *Which faces move* below; those are left to the driver). A small per-anchor
MLP reads, at each anchor's projection into the source image,

- every level of ``FeatureMaps.local`` (bilinear), each through its own first-layer slice,
- the global token (added once per image as a bias: equal to concatenating it per anchor),
- the source RGB there, and how squarely the surface faces the source camera (a cosine),

and predicts: residual RGB (so channels 0..2 start as the sampled image colour), the other
``C - 3`` feature channels, opacity, a scale per local axis, a rotation in the triangle's frame
and a small offset along the face normal.

Untrained, the outputs are exact (the output layer is zero-initialised except the extra feature
channels, as in ``single-plane``): colour = sampled image colour, opacity ``initial_opacity``,
scales ``size`` x the triangle's mean edge / sqrt(anchors_per_face) in-plane and ``thickness``
times that along the normal, rotation = the triangle's frame, no offset (anchors on the surface).

Positions lie on the head mesh of the source *identity* with neutral expression, jaw and eyes
(static Gaussians never move, so they sit where a neutral face puts them); colours and features
are sampled where the same surface points appear in the portrait, i.e. on the mesh posed with the
source's full parameters. The two differ only on faces below the motion threshold.

Which faces move (``face_motion``), for any head model: the model is evaluated once for a batch of
probes - each expression unit at 1, the jaw opened and turned by ``PROBE_ANGLE`` radians, both eyes
turned by ``PROBE_ANGLE`` - and each vertex's largest displacement is measured as a fraction of the
head's size (the template's bounding-box diagonal). Probes are grouped (eyes, mouth, rest, see
``expression_groups``) so the driver can give each region its own control head. A triangle's motion
is the largest of its corners'. The lifter skips triangles whose motion exceeds
``motion_threshold`` (keep it equal to the driver's); ``motion_threshold: null`` anchors on every
triangle.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from gshead.core.components import BuildContext, HeadModel
from gshead.core.config import LifterConfig
from gshead.core.errors import ShapeError
from gshead.core.geometry import posed_frames
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, FeatureMaps, Gaussians, HeadParams, MeshBinding
from gshead.plugins.drivers.mesh_bound import project, rotmat_to_wxyz, sample_at

# ------------------------------------------------------------------ which faces move
PROBE_ANGLE = 0.2
"""Radians by which the motion probes open/turn the jaw and turn the eyes."""

EYES, MOUTH, REST = 0, 1, 2
GROUP_NAMES: tuple[str, ...] = ("eyes", "mouth", "rest")
_EYE_PREFIXES = ("eye",)
_MOUTH_PREFIXES = ("mouth", "jaw", "tongue", "lip")


def expression_groups(names: tuple[str, ...]) -> tuple[list[int], list[int], list[int]]:
    """Indices of the expression units conditioning the eyes, mouth and rest heads.

    With ARKit-style names (at least one starting with ``eye`` or ``mouth``/``jaw``, any case):
    ``eye*`` units (blink, look, squint, wide) go to the eyes, ``mouth*``/``jaw*``/``tongue*``/``lip*``
    to the mouth, everything else (brows, cheeks, nose, ...) to the rest. Otherwise (e.g. FLAME's
    unnamed PCA units) the first half of the units goes to the mouth (PCA orders by variance and the
    largest components of talking faces are mouth motion) and the second half to the rest; the eyes
    head then sees only the eyeball rotations.
    """
    lower = [n.lower() for n in names]
    named = any(n.startswith(_EYE_PREFIXES + _MOUTH_PREFIXES) for n in lower)
    if not named:
        half = (len(names) + 1) // 2
        return [], list(range(half)), list(range(half, len(names)))
    eyes = [i for i, n in enumerate(lower) if n.startswith(_EYE_PREFIXES)]
    mouth = [i for i, n in enumerate(lower) if n.startswith(_MOUTH_PREFIXES)]
    taken = set(eyes) | set(mouth)
    return eyes, mouth, [i for i in range(len(names)) if i not in taken]


@torch.no_grad()
def face_motion(head_model: HeadModel) -> Tensor:
    """How far each triangle moves with the eyes, mouth and rest probes: [F, 3] fractions of head size.

    Uses only the ``HeadModel`` protocol (``neutral``, ``forward``, ``faces``, ``template``,
    ``expression_names``), evaluated once on a batch of probes at the template identity.
    """
    groups = expression_groups(tuple(head_model.expression_names))
    base = head_model.neutral(1)
    probes: list[tuple[int, HeadParams]] = []

    def probe(group: int, **changes: Tensor) -> None:
        probes.append((group, base.replace(**changes)))

    a = PROBE_ANGLE
    for axis in (0, 1):  # both eyes up/down, then left/right
        eyes = torch.zeros(1, 6)
        eyes[0, axis] = eyes[0, 3 + axis] = a
        probe(EYES, eyes=eyes.to(base.eyes))
    for axis in (0, 1):  # jaw open, jaw sideways
        jaw = torch.zeros(1, 3)
        jaw[0, axis] = a
        probe(MOUTH, jaw=jaw.to(base.jaw))
    for group, units in enumerate(groups):
        for i in units:
            expression = base.expression.clone()
            expression[0, i] = 1.0
            probe(group, expression=expression)

    params = HeadParams(
        **{k: torch.cat([p.tensors()[k] for _, p in probes] + [base.tensors()[k]]) for k in base.tensors()}
    )
    verts = head_model(params).vertices  # [P + 1, V, 3]
    moved = (verts[:-1] - verts[-1:]).norm(dim=-1)  # [P, V]
    template = head_model.template
    size = (template.amax(0) - template.amin(0)).norm().clamp_min(1e-12)
    per_vertex = torch.zeros(3, moved.shape[1], dtype=moved.dtype, device=moved.device)
    for k, (group, _) in enumerate(probes):
        per_vertex[group] = torch.maximum(per_vertex[group], moved[k])
    corners = per_vertex[:, head_model.faces.long()]  # [3, F, 3 corners]
    return (corners.amax(-1) / size).T.contiguous()  # [F, 3]


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

    def forward(self, features: FeatureMaps, pixels: Tensor, width: int, height: int, facing: Tensor):
        """Raw outputs at ``pixels`` [B, M, 2] of a ``width`` x ``height`` image, ``facing`` [B, M].

        Returns (rgb [B, M, 3] sampled colour, d_rgb [B, M, 3], extra [B, M, C-3], opacity logit [B, M],
        log-scale [B, M, 3], quaternion residual [B, M, 4], normal offset [B, M], code [B, M, K]).
        """
        got = tuple(m.shape[1] for m in features.local)
        if got != self.encoder_channels or features.global_token.shape[1] != self.global_channels:
            raise ShapeError(
                f"built for {self.encoder_channels} local / {self.global_channels} global encoder channels, "
                f"got {got} / {features.global_token.shape[1]}"
            )
        rgb = sample_at(features.image, pixels, width, height)  # [B, M, 3]
        h = self.pixel(torch.cat([rgb, facing[..., None]], dim=-1))  # [B, M, H]
        for level, fmap in zip(self.levels, features.local):
            h = h + level(sample_at(fmap, pixels, width, height))
        if self.token is not None:
            h = h + self.token(features.global_token)[:, None]
        d_rgb, extra, opacity, scale, quat, offset, code = self.out(self.mlp(h)).split(self.split, dim=-1)
        return rgb, d_rgb, extra, opacity[..., 0], scale, quat, offset[..., 0], code


def quat_wxyz_to_rotmat(quats: Tensor) -> Tensor:
    """[..., 4] quaternions (w, x, y, z), any norm -> [..., 3, 3] rotation matrices."""
    import roma

    q = F.normalize(quats, dim=-1)
    return roma.unitquat_to_rotmat(torch.cat([q[..., 1:], q[..., :1]], dim=-1))


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
) -> tuple[Gaussians, MeshBinding, Tensor, Tensor]:
    """Gaussians at the anchors ``face_index`` [M] / ``barycentric`` [M, 3] (shared by lifter and driver).

    Placed on ``place_vertices`` [B, V, 3], features sampled where the anchors of ``see_vertices``
    [B, V, 3] project with ``camera``. Returns the Gaussians [B, M] (world space), the binding
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
    pixels = project(seen, camera)
    rgb, d_rgb, extra, opacity, log_scale, quat, offset, code = head(
        features, pixels, camera.width, camera.height, facing
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
    local_rot = quat_wxyz_to_rotmat(identity + quat)  # [B, M, 3, 3]
    gaussians = Gaussians(
        means=means,
        quats=rotmat_to_wxyz(rot @ local_rot),
        scales=scales,
        opacities=torch.sigmoid(opacity),
        features=torch.cat([(rgb + d_rgb).clamp(0.0, 1.0), extra], dim=-1),
    )
    return gaussians, binding, local_rot, code


def neutral_face(source: HeadParams) -> HeadParams:
    """``source`` with expression, jaw and eyes zeroed (identity and pose kept)."""
    return source.replace(
        expression=torch.zeros_like(source.expression),
        jaw=torch.zeros_like(source.jaw),
        eyes=torch.zeros_like(source.eyes),
    )


# ------------------------------------------------------------------ the lifter
class SurfaceGaussianSettings(BaseModel):
    """Initial shape of Gaussians anchored on triangles (shared by mesh-anchored and light-control)."""

    model_config = ConfigDict(use_attribute_docstrings=True)

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


class MeshAnchoredConfig(LifterConfig, SurfaceGaussianSettings):
    """Static Gaussians on the head model's non-moving triangles, attributes from sampled features."""

    test_fields: ClassVar[dict[str, Any]] = {"anchors_per_face": 1}

    name: Literal["mesh-anchored"] = "mesh-anchored"
    anchors_per_face: int = Field(2, ge=1, le=64)
    """Gaussians per triangle: the centroid plus seeded uniform points (dense: 4 or more)."""
    motion_threshold: float | None = Field(0.01, gt=0.0)
    """Triangles moving more than this fraction of the head's size under the expression probes are
    left to the driver (keep equal to the driver's); null anchors on every triangle."""
    hidden: int = Field(64, ge=4, le=1024)
    """Width of the per-anchor MLP."""


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
        if config.motion_threshold is None:
            keep = torch.arange(faces.shape[0])
        else:
            keep = (face_motion(context.head_model).amax(1) <= config.motion_threshold).nonzero()[:, 0]
        face_index, bary = seeded_anchors(keep, config.anchors_per_face, config.seed)
        self.register_buffer("face_index", face_index, persistent=False)  # [Ns]
        self.register_buffer("barycentric", bary, persistent=False)  # [Ns, 3]

    @property
    def count(self) -> int:
        """Number of static Gaussians this lifter makes."""
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
        )  # fmt: skip
        return gaussians


@hookimpl
def gshead_register_lifters(register) -> None:
    register(MeshAnchoredConfig, MeshAnchoredLifter)


__all__ = [
    "AnchorHead",
    "MeshAnchoredConfig",
    "MeshAnchoredLifter",
    "expression_groups",
    "face_motion",
    "neutral_face",
    "seeded_anchors",
    "surface_gaussians",
]
