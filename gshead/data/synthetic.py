"""A synthetic multi-identity head dataset rendered through gshead's own rasterizer.

Each identity is a random shape of a registered head model (``procedural`` by default here;
``gshead data synth`` uses the default pipeline's, ``anny-head``) covered with Gaussians bound to
its triangles, as the ``mesh-bound`` driver binds them, and given a procedural appearance: a skin
tone, lips, brows, sclera and iris, a hair cap with a random hairline, blush and fine noise
detail. The shape comes from the model's own ``sample_identity`` when it has one (``anny-head``:
plausible adults), else from N(0, 0.8²) coefficients; the painted features sit where the model's
named landmarks say (see ``face_layout``). Each clip of an identity has random expressions, jaw and
eye rotations and head poses (head pose is camera motion, exactly as ``drive_frames`` applies it),
one random light direction (Lambert shading of the Gaussians' colours by their triangles' normals)
and a random background colour.

Everything is drawn from generators seeded by (seed, identity, clip), so identity 7 of seed 0
looks the same whether the dataset has 10 or 1,000 identities, and the same call writes the
same bytes. ``write_synthetic_dataset`` writes the shard format of ``gshead.data.format``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from gshead.core.errors import InputError
from gshead.core.types import Camera, Gaussians, HeadParams, MeshBinding

__all__ = [
    "Lighting",
    "SyntheticHeads",
    "SyntheticIdentity",
    "sample_clip_params",
    "write_synthetic_dataset",
]

CAMERA_DISTANCE = 1.0
"""Camera distance from the head centre (metres): the ``frontal`` tracker's default."""
CAMERA_FOV = 18.0
"""Horizontal field of view in degrees: the ``frontal`` tracker's default."""


DEFAULT_IDENTITY_SCALE = 0.8
"""Standard deviation of the identity coefficients of a head model without ``sample_identity``:
right for bases whose coefficients are about unit-variance (``procedural``, FLAME's PCA shapes)."""


def _seed(*parts: int) -> int:
    """A 63-bit seed mixed from integers (order matters; no Python ``hash`` randomisation)."""
    h = 0x243F6A8885A308D3
    for p in parts:
        h = ((h ^ (int(p) & 0xFFFFFFFFFFFFFFFF)) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 29
    return h & 0x7FFFFFFFFFFFFFFF


def _gen(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(_seed(*parts))


def _uniform(g: torch.Generator, lo: float, hi: float, *shape: int) -> Tensor:
    return lo + (hi - lo) * torch.rand(*(shape or (1,)), generator=g)


def _choice(g: torch.Generator, options: Sequence[Any]) -> Any:
    return options[int(torch.randint(len(options), (1,), generator=g))]


def _smoothstep(x: Tensor, e0: float, e1: float) -> Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


# --------------------------------------------------------------------------------------------- building


def build_head_model(name: str = "procedural", fields: dict[str, Any] | None = None, registry=None):
    """The head model registered as ``name`` (config ``fields``), built through the registry."""
    from pydantic import ValidationError

    from gshead.core.components import BuildContext
    from gshead.core.errors import ConfigError
    from gshead.core.registry import get_registry

    registry = registry or get_registry()
    spec = registry.get("headmodel", name)
    try:
        config = spec.config_class.model_validate({**(fields or {}), "name": name})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise ConfigError(f"headmodel {name!r}: {where}: {err['msg']}") from None
    with torch.no_grad():
        model = registry.build("headmodel", config, BuildContext(feature_channels=3))
    if isinstance(model, torch.nn.Module):
        model.eval()
    return model


def build_rasterizer(name: str = "cpu", registry=None):
    """The rasterizer registered as ``name`` with its default config."""
    from gshead.core.components import BuildContext
    from gshead.core.registry import get_registry

    registry = registry or get_registry()
    spec = registry.get("rasterizer", name)
    module = registry.build("rasterizer", spec.config_class(), BuildContext(feature_channels=3))
    if isinstance(module, torch.nn.Module):
        module.eval()
    return module


# --------------------------------------------------------------------------------------------- appearance


@dataclass(frozen=True)
class FaceLayout:
    """Where the features are on an identity's neutral mesh (head-model units)."""

    eyes: Tensor  # [2, 3] eye centres (subject's left, right)
    brows: Tensor  # [2, 3] brow centres
    mouth: Tensor  # [3] mouth centre
    mouth_half_width: float
    lip_half_height: float
    top: float  # highest y of the mesh
    front: float  # largest z of the mesh
    back: float  # smallest z of the mesh
    half_width: float  # half the x extent
    brow_floor: float = -math.inf  # brows are painted only in front of this z (keeps them off
    # surfaces behind the brow ridge: the eyeballs and the eye sockets of meshes that have them)


LID_AND_LIP_LANDMARKS = (
    "eye_left_upper_lid", "eye_left_lower_lid", "eye_right_upper_lid", "eye_right_lower_lid",
    "upper_lip", "lower_lip",
)  # fmt: skip
"""Landmark names (``anny-head``'s) that place the eyes and the mouth when the procedural ones are missing."""
BROW_ABOVE_EYES = 0.34
"""Brow centres above the eye centres, as a fraction of the distance between the eyes."""
MOUTH_HALF_WIDTH = 0.375
"""Half the mouth width as a fraction of the distance between the eyes."""


def face_layout(model, mesh_vertices: Tensor, landmarks: Tensor) -> FaceLayout:
    """Feature positions from the model's named landmarks: the ``procedural`` names (eye corners,
    brows, mouth corners, lips), else ``LID_AND_LIP_LANDMARKS`` (``anny-head``: eyes between the
    lids, mouth between the lips, brows and mouth width in proportion to the eye distance), else
    fractions of the mesh's bounding box (rough, but any head model works)."""
    v = mesh_vertices
    lo, hi = v.min(0).values, v.max(0).values
    floor = -math.inf
    centre, half = (lo + hi) / 2, (hi - lo) / 2
    names = tuple(getattr(model, "landmark_names", ()))

    def lm(name: str) -> Tensor | None:
        return landmarks[names.index(name)] if name in names else None

    need = ("eye_left_outer", "eye_left_inner", "eye_right_outer", "eye_right_inner", "brow_left",
            "brow_right", "mouth_left", "mouth_right", "lip_upper", "lip_lower")  # fmt: skip
    if all(n in names for n in need):
        eyes = torch.stack([
            (lm("eye_left_outer") + lm("eye_left_inner")) / 2,
            (lm("eye_right_outer") + lm("eye_right_inner")) / 2,
        ])  # fmt: skip
        brows = torch.stack([lm("brow_left"), lm("brow_right")])
        ml, mr, lu, ll = lm("mouth_left"), lm("mouth_right"), lm("lip_upper"), lm("lip_lower")
        mouth = (ml + mr + lu + ll) / 4
        mhw = float((ml - mr).norm()) / 2
        lhh = float((lu - ll).norm()) / 2
    elif all(n in names for n in LID_AND_LIP_LANDMARKS):
        # anny-head's names: eye lids and lips (no brows or mouth corners: those are placed in
        # proportion to the eye distance, as on an average adult face)
        eyes = torch.stack([
            (lm("eye_left_upper_lid") + lm("eye_left_lower_lid")) / 2,
            (lm("eye_right_upper_lid") + lm("eye_right_lower_lid")) / 2,
        ])  # fmt: skip
        ipd = float((eyes[0] - eyes[1]).norm())
        brows = eyes + torch.tensor([0.0, BROW_ABOVE_EYES * ipd, 0.0])
        lu, ll = lm("upper_lip"), lm("lower_lip")
        mouth = (lu + ll) / 2
        mhw = MOUTH_HALF_WIDTH * ipd
        lhh = float((lu - ll).norm()) / 2
        floor = float(eyes[:, 2].min()) - 0.002
    else:

        def at(fx: float, fy: float) -> Tensor:
            p = torch.stack([centre[0] + fx * half[0], centre[1] + fy * half[1], hi[2]])
            return p

        eyes = torch.stack([at(0.4, 0.22), at(-0.4, 0.22)])
        brows = torch.stack([at(0.38, 0.41), at(-0.38, 0.41)])
        mouth = at(0.0, -0.39)
        mhw, lhh = 0.3 * float(half[0]), 0.07 * float(half[1])
    return FaceLayout(
        eyes=eyes, brows=brows, mouth=mouth, mouth_half_width=mhw, lip_half_height=max(lhh, 0.004),
        top=float(hi[1]), front=float(hi[2]), back=float(lo[2]), half_width=float(half[0]),
        brow_floor=floor,
    )  # fmt: skip


SKIN_LIGHT = (0.97, 0.82, 0.71)
SKIN_DARK = (0.33, 0.21, 0.15)
HAIR_COLOURS = (
    (0.05, 0.04, 0.04), (0.18, 0.11, 0.07), (0.36, 0.22, 0.12), (0.72, 0.58, 0.34),
    (0.52, 0.20, 0.08), (0.62, 0.62, 0.62),
)  # fmt: skip
IRIS_COLOURS = (
    (0.30, 0.17, 0.08),
    (0.28, 0.45, 0.66),
    (0.30, 0.46, 0.30),
    (0.45, 0.34, 0.16),
    (0.45, 0.48, 0.50),
)


def albedo(points: Tensor, layout: FaceLayout, g: torch.Generator) -> Tensor:
    """Procedural colours [M, 3] in [0, 1] of surface points [M, 3] of one identity's neutral mesh.

    Draws this identity's palette and feature sizes from ``g``: skin tone, blush, lips, brows,
    sclera, iris and pupil, a hair cap with a random hairline (or none), and noise detail.
    """
    x, y, z = points.unbind(-1)
    m = points.shape[0]
    t = float(_uniform(g, 0.0, 1.0)) ** 1.3
    skin = torch.tensor(SKIN_LIGHT) * (1 - t) + torch.tensor(SKIN_DARK) * t
    skin = (skin * (1 + 0.06 * (torch.rand(3, generator=g) - 0.5))).clamp(0, 1)
    colour = skin.expand(m, 3).clone()
    front = _smoothstep(z, layout.front - 0.06, layout.front - 0.03)  # 1 on the face side

    # blush on the cheeks
    blush = float(_uniform(g, 0.0, 0.25))
    for k in range(2):
        cx, cy = float(layout.eyes[k, 0]) * 1.1, float(layout.eyes[k, 1]) - 0.035
        w = torch.exp(-0.5 * (((x - cx) / 0.015) ** 2 + ((y - cy) / 0.012) ** 2)) * front
        colour = (
            colour * (1 - blush * w[:, None]) + blush * w[:, None] * torch.tensor([0.85, 0.35, 0.35]) * skin
        )

    # lips
    lip = (
        skin * torch.tensor([0.85, 0.52, 0.52]) + torch.tensor([0.12, 0.02, 0.04]) * float(_uniform(g, 0, 1))
    ).clamp(0, 1)
    lip = lip * float(_uniform(g, 0.75, 1.0))
    mx, my = float(layout.mouth[0]), float(layout.mouth[1])
    hw = layout.mouth_half_width * float(_uniform(g, 0.85, 1.05))
    hh = layout.lip_half_height * float(_uniform(g, 0.75, 1.05)) + 0.001
    r = ((x - mx) / hw) ** 2 + ((y - my) / hh) ** 2
    w = (1 - _smoothstep(r, 0.7, 1.0)) * front
    colour = colour * (1 - w[:, None]) + w[:, None] * lip

    # hair cap: hairline high at the front, down to the ears at the back; sometimes bald
    hair = torch.tensor(_choice(g, HAIR_COLOURS)) * float(_uniform(g, 0.85, 1.15))
    brow_y = float(layout.brows[:, 1].mean())
    bald = float(_uniform(g, 0, 1)) < 0.08
    if not bald:
        line_front = brow_y + float(_uniform(g, 0.25, 0.55)) * (layout.top - brow_y)
        line_back = float(layout.eyes[:, 1].mean()) - float(_uniform(g, 0.01, 0.05))
        depth = layout.front - layout.back
        k = _smoothstep(
            z, layout.back + 0.35 * depth, layout.back + 0.75 * depth
        )  # 0 at the back, 1 at the front
        wave = 0.006 * torch.cos(x / max(layout.half_width, 1e-6) * math.pi * float(_uniform(g, 1.0, 3.0)))
        line = line_back * (1 - k) + (line_front + wave) * k
        cover = _smoothstep(y - line, -0.003, 0.004)
        strands = 1 + 0.18 * torch.sin(x * float(_uniform(g, 300, 600)) + 40 * y) * torch.rand(m, generator=g)
        hair_c = (hair[None] * strands[:, None]).clamp(0, 1)
        colour = colour * (1 - cover[:, None]) + cover[:, None] * hair_c

    # brows: arcs above the eyes
    brow = (hair * 0.7 + 0.02).clamp(0, 1)
    length = float(_uniform(g, 0.016, 0.024))
    thick = float(_uniform(g, 0.0022, 0.0045))
    for k in range(2):
        bx, by = float(layout.brows[k, 0]), float(layout.brows[k, 1])
        u = (x - bx) / length
        arc = by + 0.004 * (1 - u**2)
        w = (
            (1 - _smoothstep(u.abs(), 0.8, 1.0))
            * (1 - _smoothstep((y - arc).abs(), 0.6 * thick, thick))
            * front
        )
        if math.isfinite(layout.brow_floor):
            w = w * _smoothstep(z, layout.brow_floor - 0.002, layout.brow_floor)
        colour = colour * (1 - w[:, None]) + w[:, None] * brow

    # eyes: sclera, iris, pupil
    iris = torch.tensor(_choice(g, IRIS_COLOURS)) * float(_uniform(g, 0.8, 1.2))
    iris_r = float(_uniform(g, 0.0045, 0.006))
    for k in range(2):
        ex, ey, ez = (float(c) for c in layout.eyes[k])
        near = _smoothstep(z, ez - 0.008, ez - 0.004)
        d2 = ((x - ex) / 0.011) ** 2 + ((y - ey) / 0.0055) ** 2
        w = (1 - _smoothstep(d2, 0.8, 1.0)) * near
        colour = colour * (1 - w[:, None]) + w[:, None] * torch.tensor([0.92, 0.90, 0.87])
        d = ((x - ex) ** 2 + (y - ey) ** 2).sqrt()
        w = (1 - _smoothstep(d, 0.8 * iris_r, iris_r)) * near
        colour = colour * (1 - w[:, None]) + w[:, None] * iris.clamp(0, 1)
        w = (1 - _smoothstep(d, 0.35 * iris_r, 0.45 * iris_r)) * near
        colour = colour * (1 - w[:, None]) + w[:, None] * 0.03

    # fine detail: low-frequency blotches and per-Gaussian luminance noise
    blotch = torch.zeros(m)
    for _ in range(3):
        direction = torch.nn.functional.normalize(torch.randn(3, generator=g), dim=0)
        freq = float(_uniform(g, 30.0, 90.0))
        phase = float(_uniform(g, 0.0, 2 * math.pi))
        blotch = blotch + torch.sin(points @ direction * freq + phase)
    sigma = float(_uniform(g, 0.02, 0.07))
    lum = 1 + 0.02 * blotch + sigma * torch.randn(m, generator=g)
    return (colour * lum[:, None]).clamp(0.0, 1.0)


# --------------------------------------------------------------------------------------------- identities


@dataclass(frozen=True)
class SyntheticIdentity:
    """One synthetic person: shape, Gaussians bound to the head mesh, and their colours."""

    index: int
    identity: Tensor  # [1, I] identity coefficients
    binding: MeshBinding  # [M] where each Gaussian sits on the mesh
    albedo: Tensor  # [M, 3] colours before lighting
    scales: Tensor  # [1, M, 3] standard deviations
    opacities: Tensor  # [1, M]


@dataclass(frozen=True)
class Lighting:
    """One light for a clip: Lambert shading with an ambient term, fixed relative to the camera."""

    direction: Tensor  # [3] unit vector towards the light, world coordinates (y up, z to the camera)
    ambient: float  # in [0, 1]
    colour: Tensor  # [3] light tint
    background: Tensor  # [3] background colour in [0, 1]


def sample_lighting(g: torch.Generator) -> Lighting:
    """A random light from the camera's half-space and a random background colour."""
    d = torch.stack([_uniform(g, -1.0, 1.0)[0], _uniform(g, -0.4, 1.0)[0], _uniform(g, 0.4, 1.2)[0]])
    tint = 1 + 0.12 * (torch.rand(3, generator=g) - 0.5)
    return Lighting(
        direction=torch.nn.functional.normalize(d, dim=0),
        ambient=float(_uniform(g, 0.3, 0.55)),
        colour=tint,
        background=torch.rand(3, generator=g),
    )


ACTIVE_EXPRESSIONS = 4.5
"""Mean number of expressions active in a random frame (each with probability 0.3, or
``ACTIVE_EXPRESSIONS / E`` for a model with more than 15 expressions)."""


def sample_clip_params(model, identity: Tensor, frames: int, g: torch.Generator) -> HeadParams:
    """Random per-frame parameters [frames] for one identity [1, I]: sparse expressions in [0, 1],
    jaw opening, gaze, head rotation (about +-30 degrees of yaw) and a small translation."""
    e = len(model.expression_names)
    # about 4.5 active expressions per frame: 30% of procedural's 15, fewer of anny's 52 ARKit ones
    rate = 0.3 if e <= ACTIVE_EXPRESSIONS / 0.3 else ACTIVE_EXPRESSIONS / e
    active = torch.rand(frames, e, generator=g) < rate
    expression = torch.rand(frames, e, generator=g) * active
    neutral = torch.rand(frames, 1, generator=g) < 0.15
    expression = torch.where(neutral, 0.15 * expression, expression)
    opening = torch.rand(frames, generator=g) * 0.35 * (torch.rand(frames, generator=g) < 0.6)
    jaw = torch.stack(
        [
            opening,
            0.04 * (torch.rand(frames, generator=g) - 0.5),
            0.04 * (torch.rand(frames, generator=g) - 0.5),
        ],
        -1,
    )
    gaze = torch.stack(
        [
            0.4 * (torch.rand(frames, generator=g) - 0.5),
            0.6 * (torch.rand(frames, generator=g) - 0.5),
            torch.zeros(frames),
        ],
        -1,
    )
    eyes = torch.cat([gaze, gaze], -1)
    amp = torch.tensor([0.45, 1.0, 0.3])  # pitch, yaw, roll ranges (radians, peak to peak)
    rotation = (torch.rand(frames, 3, generator=g) - 0.5) * amp
    translation = (torch.rand(frames, 3, generator=g) - 0.5) * torch.tensor([0.03, 0.03, 0.08])
    return HeadParams(
        identity=identity.expand(frames, -1).clone(),
        expression=expression,
        jaw=jaw,
        eyes=eyes,
        rotation=rotation,
        translation=translation,
    )


class SyntheticHeads:
    """Makes and renders synthetic identities of one head model (see the module docstring).

    :param head_model: registered head-model name.
    :param rasterizer: registered rasterizer name (``cpu``: the numba kernel; ``torch-tiles``).
    :param gaussians_per_face: Gaussians per mesh triangle (more: finer appearance detail).
    :param identity_scale: standard deviation of normally drawn identity coefficients. ``None``
        (the default): the head model's own ``sample_identity(generator, batch_size)`` when it has
        one (``anny-head``: plausible adults), else ``DEFAULT_IDENTITY_SCALE``.
    """

    def __init__(
        self,
        seed: int = 0,
        head_model: str = "procedural",
        rasterizer: str = "cpu",
        gaussians_per_face: int = 3,
        identity_scale: float | None = None,
        head_model_fields: dict[str, Any] | None = None,
        registry=None,
    ) -> None:
        if gaussians_per_face < 1:
            raise InputError(f"gaussians_per_face {gaussians_per_face}: expected at least 1")
        self.seed = int(seed)
        self.head_model_name = head_model
        self.model = build_head_model(head_model, head_model_fields, registry)
        self.rasterizer = build_rasterizer(rasterizer, registry)
        self.gaussians_per_face = int(gaussians_per_face)
        self.identity_scale = None if identity_scale is None else float(identity_scale)

    @property
    def identity_dim(self) -> int:
        return int(self.model.identity_dim)

    @torch.no_grad()
    def identity(self, index: int) -> SyntheticIdentity:
        """Identity ``index`` of this seed (independent of how many identities are made)."""
        g = _gen(self.seed, 1, index)
        model = self.model
        sampler = getattr(model, "sample_identity", None)
        if self.identity_scale is None and callable(sampler):
            ident = sampler(g, 1).float().reshape(1, self.identity_dim)
        else:
            scale = DEFAULT_IDENTITY_SCALE if self.identity_scale is None else self.identity_scale
            ident = torch.randn(1, self.identity_dim, generator=g) * scale
        neutral = model.neutral(1).replace(identity=ident)
        mesh = model(neutral)
        faces = model.faces
        n_faces, k = faces.shape[0], self.gaussians_per_face
        face_index = torch.arange(n_faces).repeat_interleave(k)
        r = torch.rand(n_faces * k, 2, generator=g)
        r = torch.where(r.sum(-1, keepdim=True) > 1, 1 - r, r)  # uniform on the triangle
        bary = torch.cat([1 - r.sum(-1, keepdim=True), r], -1)
        binding = MeshBinding(face_index, bary, torch.zeros(n_faces * k, 3))
        from gshead.core.geometry import posed_points

        verts = mesh.vertices.float()
        points = posed_points(binding, verts, faces)[0]  # [M, 3]
        layout = face_layout(model, verts[0], mesh.landmarks[0].float())
        colours = albedo(points, layout, g)
        tri = verts[0][faces]  # [F, 3, 3]
        edges = (tri - tri.roll(1, dims=1)).norm(dim=-1).mean(-1)  # [F]
        s = 0.6 * edges[face_index] / math.sqrt(k) * 1.25
        scales = torch.stack([s, s, 0.3 * s], -1)[None]
        return SyntheticIdentity(
            index=index,
            identity=ident,
            binding=binding,
            albedo=colours,
            scales=scales,
            opacities=torch.full((1, n_faces * k), 0.97),
        )

    def camera(self, size: int, batch_size: int = 1) -> Camera:
        """The dataset's camera before head motion (the ``frontal`` tracker's): [batch_size], size²."""
        return Camera.frontal(CAMERA_DISTANCE, CAMERA_FOV, size, size, batch_size)

    @torch.no_grad()
    def posed_gaussians(self, person: SyntheticIdentity, params: HeadParams, lighting: Lighting) -> Gaussians:
        """``person``'s Gaussians [B, M] (head space) for ``params`` [B] (their identity is replaced
        by the person's), coloured by the albedo under ``lighting`` seen with the frame's head pose."""
        import roma

        from gshead.core.geometry import face_frames, rotmat_to_quat

        b = params.batch_size
        params = params.replace(identity=person.identity.expand(b, -1))
        verts = self.model(params).vertices.float()  # [B, V, 3]
        faces = self.model.faces
        # Gaussians ride on their triangles exactly as ``posed_points`` / ``posed_rotations`` place
        # them (zero offsets): the barycentric point and the triangle's frame. Frames, quaternions
        # and normals are computed once per triangle and gathered (3x less work than per Gaussian).
        index = person.binding.face_index
        corners = verts[:, faces[index]]  # [B, M, 3 corners, 3]
        means = (person.binding.barycentric[None, :, :, None] * corners).sum(2)  # [B, M, 3]
        frames = face_frames(verts, faces)[1]  # [B, F, 3, 3] columns: edge, in-plane, normal
        quats = rotmat_to_quat(frames)[:, index]  # [B, M, 4] (w, x, y, z)
        head = roma.rotvec_to_rotmat(params.rotation.float())  # [B, 3, 3] head-to-world rotation
        normals = frames[..., 2] @ head.transpose(1, 2)  # [B, F, 3] face normals in world space
        lambert = (normals @ lighting.direction).clamp(min=0.0)[:, index]  # [B, M]
        shade = lighting.ambient + (1 - lighting.ambient) * lambert
        colours = (person.albedo[None] * shade[..., None] * lighting.colour).clamp(0.0, 1.0)
        return Gaussians(
            means=means,
            quats=quats,
            scales=person.scales.expand(b, -1, -1),
            opacities=person.opacities.expand(b, -1),
            features=colours,
        )

    @torch.no_grad()
    def render(self, person: SyntheticIdentity, params: HeadParams, size: int, lighting: Lighting) -> Tensor:
        """Images [B, 3, size, size] float in [0, 1] of ``person`` with ``params`` [B] (their
        identity is replaced by the person's), lit by ``lighting``."""
        gaussians = self.posed_gaussians(person, params, lighting)
        b = params.batch_size
        camera = self.camera(size, b).moved(params.pose_matrix())  # head pose as camera motion
        render = self.rasterizer(gaussians, camera, lighting.background)
        return render.features[:, :3].clamp(0.0, 1.0)

    @torch.no_grad()
    def clip(self, person: SyntheticIdentity, clip: int, frames: int, size: int):
        """Clip ``clip`` of ``person``: (uint8 frames [F, 3, S, S], params [F], camera [F])."""
        g = _gen(self.seed, 2, person.index, clip)
        params = sample_clip_params(self.model, person.identity, frames, g)
        lighting = sample_lighting(g)
        images = self.render(person, params, size, lighting)
        pixels = (images * 255.0).round().to(torch.uint8)
        return pixels, params, self.camera(size, frames)


def write_synthetic_dataset(
    root: str | Path,
    identities: int = 100,
    frames: int = 8,
    size: int = 128,
    seed: int = 0,
    head_model: str = "procedural",
    splits: Sequence[float] = (0.8, 0.1, 0.1),
    progress: bool = True,
    *,
    clips_per_identity: int = 1,
    clips_per_shard: int = 64,
    rasterizer: str = "cpu",
    gaussians_per_face: int = 3,
    overwrite: bool = False,
):
    """Render ``identities`` synthetic people, ``clips_per_identity`` clips of ``frames`` frames
    each at ``size``², into the dataset folder ``root`` (written atomically; see
    ``gshead.data.format``). Identities are split into train/val/test by ``splits``.
    Returns the ``DatasetInfo``."""
    from gshead.data.format import dataset_writer, split_identities

    if identities < 1:
        raise InputError(f"identities {identities}: expected at least 1")
    if frames < 2:
        raise InputError(f"frames {frames}: expected at least 2 per clip (a source and a target)")
    if not 16 <= size <= 4096:
        raise InputError(f"size {size}: expected a side between 16 and 4096 pixels")
    if clips_per_identity < 1:
        raise InputError(f"clips_per_identity {clips_per_identity}: expected at least 1")
    split_of = split_identities(identities, splits, _gen(seed, 3))
    lookup = {i: s for s, ids in split_of.items() for i in ids}
    heads = SyntheticHeads(seed, head_model, rasterizer, gaussians_per_face)
    with dataset_writer(root, overwrite=overwrite, clips_per_shard=clips_per_shard) as builder:
        from gshead.data.format import Clip

        bar = _bar(identities * clips_per_identity, progress)
        try:
            for i in range(identities):
                person = heads.identity(i)
                for c in range(clips_per_identity):
                    pixels, params, camera = heads.clip(person, c, frames, size)
                    builder.add(lookup[i], Clip(pixels, params, camera, i))
                    bar.update()
        finally:
            bar.close()
        info = builder.finish(
            head_model,
            split_of,
            source="synthetic",
            extra={
                "seed": seed,
                "identities": identities,
                "clips_per_identity": clips_per_identity,
                "gaussians_per_face": gaussians_per_face,
                "rasterizer": rasterizer,
                "splits": list(splits),
            },
        )
    return info


def _bar(total: int, enabled: bool):
    import sys

    from tqdm import tqdm

    return tqdm(
        total=total, desc="synth", unit="clip", file=sys.stderr, dynamic_ncols=True, disable=not enabled
    )
