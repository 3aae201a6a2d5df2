"""``expression-gaussians``: GAGAvatar's expression Gaussians — one Gaussian per head-model vertex.

At reconstruction (``prepare``, once): every vertex ``v`` has a learned code ``head_base[v]``
[V, code]; it is concatenated with the encoder's global token (GAGAvatar: the 768-d CLS token)
and passed through an MLP (``feature_layers``: ``layers`` Linears with a ReLU *between* them,
none after the last; GAGAvatar 1024 -> 256 x 4). The harmonic code of the source view direction (27 values: ``direction_code``
from ``gshead.plugins._shared.direction_code``, the same as the ``dual-plane`` lifter's) is
appended, and four small heads (Linear, ReLU, Linear) predict the Gaussian's ``C`` feature
channels (0..2 RGB through a sigmoid, the rest linear), opacity (sigmoid), scale (sigmoid x
``max_scale``, metres: GAGAvatar's 0.05 in FLAME x 5 units is 0.01 m) and rotation (normalised
quaternion). None of this depends on the expression, so it runs once.

Binding: Gaussian ``v`` rides on vertex ``v`` as a corner of one incident triangle (the largest
one on the template): one-hot barycentric weights, zero offset, so its position is the driven
vertex exactly. A vertex that no triangle uses is bound to its closest triangle instead (it
then follows that triangle rigidly). The predicted rotation is the Gaussian's rotation on the
*source* mesh; the rig stores it in its triangle's frame, and ``drive`` carries it with the
triangle (GAGAvatar keeps rotations fixed; the two agree for the source expression).

``compat: official`` (``configs/gagavatar.yaml``) reproduces three quirks of the official code
that its weights were trained with:

* the rotation head's output [V, 4] is normalised over the *vertex* axis (``F.normalize`` with
  its default ``dim=1`` on a [B, V, 4] tensor), not per Gaussian, so each "quaternion" is tiny
  (norm ~ 1/sqrt(V)); ``attributes`` returns exactly these values;
* the official CUDA rasterizer builds the covariance from such a quaternion without
  renormalising it (``R`` from the unit-quaternion formula, ``Sigma = R S^2 R^T``; nearly
  axis-aligned). ``prepare`` computes that covariance and turns it back into a unit quaternion
  and scales (eigendecomposition), so any gshead rasterizer draws the official ellipsoids;
* in driven frames the rotations stay fixed in the world (``drive`` only moves the means),
  where ``sane`` carries them with their triangle;
* a FLAME **global pose** (``HeadParams.root``; GAGAvatar_track's ``posecode[:3]``) turns the
  *mesh* about FLAME joint 0, as the official ``FLAMEModel`` LBS does: the expression Gaussians'
  means are ``J0 + R (v - J0)`` (``J0`` the root joint of the frame's shaped mesh,
  ``HeadMesh.joints[:, 0]``), their rotations stay world-fixed, the lifted plane Gaussians and the
  camera do not move (``applies_root`` is true, so ``drive_frames`` leaves the root to the driver
  instead of folding it into camera motion). Under ``sane`` the root is camera motion about
  joint 0 like any head pose (``HeadParams.root_as_pose``): the whole head turns.

Per frame (``drive``): one head-model evaluation for the frame's expression, jaw and eyes
(and, under ``compat: official``, its global pose about joint 0), one gather and a 3x3 rotation
product per vertex. Nothing per frame depends on the encoder; the
rig's latent is empty. Works with any head model (``procedural``, ``anny-head``, ``flame``):
``head_base`` has one row per vertex of the pipeline's head model.

State-dict mapping (GAGAvatar -> gshead ``ExpressionGaussiansDriver``); GAGAvatar's MLP widths
need ``code_channels: 256, hidden: 256, layers: 4, head_hidden: 128`` and a 768-d global token:

=====================================  ======================================
GAGAvatar                              gshead
=====================================  ======================================
``head_base`` [5023, 256]              ``head_base`` (FLAME: V = 5023)
``gs_generator_g.feature_layers.*``    ``feature_layers.*`` (Linear at 0, 2, 4, 6)
``gs_generator_g.color_layers.*``      ``color_layers.*`` (Linear at 0, 2)
``gs_generator_g.opacity_layers.*``    ``opacity_layers.*``
``gs_generator_g.scale_layers.*``      ``scale_layers.*``
``gs_generator_g.rotation_layers.*``   ``rotation_layers.*``
=====================================  ======================================

Checked against the official code (``tests/plugins/test_gagavatar_parity.py``): the order
``[head_base, global]`` of the MLP input, ``[features, direction code]`` of the heads' input, no
ReLU after the last ``feature_layers`` Linear.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import roma
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gshead.core.components import BuildContext
from gshead.core.config import DriverConfig
from gshead.core.errors import ShapeError
from gshead.core.geometry import bind_to_mesh, posed_frames, quat_to_rotmat, rotmat_to_quat
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Avatar, Camera, FeatureMaps, Gaussians, HeadParams, MeshBinding, Rig
from gshead.plugins._shared.direction_code import DIRECTION_CODE, direction_code, forward_direction


class ExpressionGaussiansConfig(DriverConfig):
    """One Gaussian per head-model vertex; attributes from a per-vertex code and the global token (once)."""

    test_fields: ClassVar[dict[str, Any]] = {"code_channels": 8, "hidden": 16, "layers": 2, "head_hidden": 8}

    name: Literal["expression-gaussians"] = "expression-gaussians"
    code_channels: int = Field(256, ge=1, le=4096)
    """Size of the learned per-vertex code ``head_base`` [V, code_channels] (GAGAvatar: 256)."""
    hidden: int = Field(256, ge=4, le=4096)
    """Width of the MLP on [per-vertex code, global token] (GAGAvatar: 256)."""
    layers: int = Field(4, ge=1, le=16)
    """Linear + ReLU layers of that MLP (GAGAvatar: 4)."""
    head_hidden: int = Field(128, ge=4, le=4096)
    """Hidden width of each attribute head (features, opacity, scale, rotation; GAGAvatar: 128)."""
    max_scale: float = Field(0.01, gt=0.0)
    """Largest Gaussian standard deviation, metres (sigmoid-bounded; GAGAvatar's 0.05 in FLAME x 5 units)."""
    compat: Literal["sane", "official"] = "sane"
    """``official``: GAGAvatar's vertex-axis rotation normalisation, its rasterizer's use of those
    non-unit quaternions, and world-fixed rotations when driven (module docstring); ``sane``:
    unit quaternion per Gaussian, carried with the mesh."""


def vertex_binding(template: Tensor, faces: Tensor) -> MeshBinding:
    """Bind each vertex of ``template`` [V, 3] as a corner (one-hot barycentric, zero offset) of its
    largest incident triangle of ``faces`` [F, 3]; vertices in no triangle go to the closest one."""
    faces = faces.long()
    v, n_faces = template.shape[0], faces.shape[0]
    tri = template.double()[faces]  # [F, 3, 3]
    area = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1).norm(dim=-1)  # [F]
    rank = torch.empty(n_faces, dtype=torch.long)
    order = torch.argsort(area, stable=True)
    rank[order] = torch.arange(n_faces)
    best = torch.full((v,), -1, dtype=torch.long)
    best = best.scatter_reduce(0, faces.reshape(-1), rank.repeat_interleave(3), reduce="amax")  # [V]
    used = best >= 0
    face_index = order[best.clamp_min(0)]  # [V]
    corner = (faces[face_index] == torch.arange(v)[:, None]).int().argmax(1)  # [V]
    bary = F.one_hot(corner, 3).to(template.dtype)  # [V, 3]
    offset = torch.zeros(v, 3, dtype=template.dtype)
    if not bool(used.all()):
        loose = bind_to_mesh(template[~used], template, faces)
        face_index = face_index.clone()
        face_index[~used], bary[~used], offset[~used] = loose.face_index, loose.barycentric, loose.offset
    return MeshBinding(face_index=face_index, barycentric=bary, offset=offset)


def official_covariance(quats: Tensor, scales: Tensor) -> tuple[Tensor, Tensor]:
    """What the official CUDA rasterizer draws for quaternions of any norm [..., 4] (w, x, y, z) and
    scales [..., 3]: ``R`` from the unit-quaternion formula applied to the raw values (no
    renormalisation), ``Sigma = R diag(s)^2 R^T``; returned as the unit quaternions and scales
    whose covariance is that ``Sigma`` (eigendecomposition, in float64)."""
    w, x, y, z = quats.double().unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    )  # fmt: skip
    r = torch.stack(rows, dim=-1).reshape(*quats.shape[:-1], 3, 3)
    sigma = r @ torch.diag_embed(scales.double() ** 2) @ r.transpose(-1, -2)
    values, vectors = torch.linalg.eigh(0.5 * (sigma + sigma.transpose(-1, -2)))  # [..., 3], [..., 3, 3]
    flip = torch.linalg.det(vectors) < 0
    vectors = torch.where(flip[..., None, None], vectors * torch.tensor([1.0, 1.0, -1.0], dtype=vectors.dtype), vectors)
    out_q = rotmat_to_quat(vectors).to(quats.dtype)
    out_s = values.clamp_min(0).sqrt().clamp_min(1e-9).to(scales.dtype)
    return out_q, out_s


def _mlp_head(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_channels, hidden), nn.ReLU(), nn.Linear(hidden, out_channels))


class ExpressionGaussiansDriver(nn.Module):
    """See the module docstring."""

    def __init__(self, config: ExpressionGaussiansConfig, context: BuildContext) -> None:
        super().__init__()
        if context.head_model is None:
            raise ValueError("expression-gaussians needs a head model in its build context")
        if context.feature_channels < 3:
            raise ShapeError(
                f"expression-gaussians: feature_channels is {context.feature_channels}; expected at least 3 (RGB)"
            )
        self.config = config
        self.official = config.compat == "official"
        # Shared with the pipeline, not a submodule: its buffers are not the driver's weights.
        self.__dict__["head_model"] = context.head_model
        hm = context.head_model
        self.feature_channels = context.feature_channels
        self.global_channels = context.encoder_global_channels
        verts = hm.template.shape[0]
        self.head_base = nn.Parameter(torch.randn(verts, config.code_channels) * 0.5)  # [V, code]
        mlp: list[nn.Module] = []
        width = config.code_channels + self.global_channels
        for i in range(config.layers):
            mlp += [nn.Linear(width, config.hidden)] + ([nn.ReLU()] if i < config.layers - 1 else [])
            width = config.hidden
        self.feature_layers = nn.Sequential(*mlp)  # no ReLU after the last Linear (GAGAvatar)
        head_in = config.hidden + DIRECTION_CODE
        self.color_layers = _mlp_head(head_in, config.head_hidden, context.feature_channels)
        self.opacity_layers = _mlp_head(head_in, config.head_hidden, 1)
        self.scale_layers = _mlp_head(head_in, config.head_hidden, 3)
        self.rotation_layers = _mlp_head(head_in, config.head_hidden, 4)
        with torch.no_grad():  # start rotations near identity (normalising a near-zero vector is unstable)
            self.rotation_layers[-1].bias[0] += 1.0
        binding = vertex_binding(hm.template.detach().cpu().float(), hm.faces.detach().cpu())
        self.register_buffer("face_index", binding.face_index, persistent=False)  # [V]
        self.register_buffer("barycentric", binding.barycentric, persistent=False)  # [V, 3]
        self.register_buffer("offset", binding.offset, persistent=False)  # [V, 3]

    @property
    def binding(self) -> MeshBinding:
        return MeshBinding(self.face_index, self.barycentric, self.offset)

    @property
    def applies_root(self) -> bool:
        """Whether ``drive`` itself applies ``HeadParams.root`` (``compat: official``: only the mesh
        turns, about joint 0); otherwise ``drive_frames`` makes it camera motion."""
        return self.official

    def _vertices(self, params: HeadParams) -> Tensor:
        """The head model's vertices [B, V, 3] for ``params``, turned by ``params.root`` about the
        root joint (``compat: official``; the official FLAME LBS with a global pose)."""
        mesh = self.head_model(params.replace(root=None))
        if params.root is None or not self.official:
            return mesh.vertices
        rot = roma.rotvec_to_rotmat(params.root.to(mesh.vertices.dtype))  # [B, 3, 3]
        j0 = mesh.joints[:, :1]  # [B, 1, 3]
        return j0 + (mesh.vertices - j0) @ rot.transpose(-1, -2)

    def attributes(self, global_token: Tensor, direction: Tensor) -> Gaussians:
        """Per-vertex Gaussians [1, V] (means zero) from ``global_token`` [1, G] and ``direction`` [1, 3]
        (the source camera's forward axis, ``forward_direction``); quaternions are in the world
        frame of the source mesh (``compat: official``: the official non-unit values)."""
        v = self.head_base.shape[0]
        token = global_token.to(self.head_base.dtype).expand(v, -1)  # [V, G]
        x = self.feature_layers(torch.cat([self.head_base, token], dim=-1))  # [V, hidden]
        code = direction_code(direction.to(x.dtype)).expand(v, -1)  # [V, 27]
        x = torch.cat([x, code], dim=-1)
        feats = self.color_layers(x)  # [V, C]
        return Gaussians(
            means=torch.zeros(1, v, 3, dtype=x.dtype, device=x.device),
            quats=F.normalize(self.rotation_layers(x), dim=0 if self.official else -1)[None],
            scales=(torch.sigmoid(self.scale_layers(x)) * self.config.max_scale).clamp_min(1e-9)[None],
            opacities=torch.sigmoid(self.opacity_layers(x))[None, :, 0],
            features=torch.cat([torch.sigmoid(feats[:, :3]), feats[:, 3:]], dim=-1)[None],
        )

    def prepare(self, features: FeatureMaps, source: HeadParams, camera: Camera, static: Gaussians) -> Rig:
        if features.global_token.shape[0] != 1:
            raise ShapeError(
                f"expression-gaussians: expected one source portrait, got {features.global_token.shape[0]}"
            )
        if features.global_token.shape[1] != self.global_channels:
            raise ShapeError(
                f"expression-gaussians: built for a {self.global_channels}-d global token, "
                f"got {features.global_token.shape[1]}"
            )
        hm = self.head_model
        g = self.attributes(features.global_token, forward_direction(camera.expand(1)))
        verts = self._vertices(source)  # [1, V, 3] the source mesh
        means, rest = posed_frames(self.binding, verts, hm.faces)  # [1, V, 3], [1, V, 3, 3]
        if self.official:  # the official rasterizer's covariance, as unit quaternions + scales; world-fixed
            quats, scales = official_covariance(g.quats, g.scales)
            dynamic = g.replace(means=means.to(g.means.dtype), quats=quats, scales=scales)
            return Rig(dynamic=dynamic, binding=self.binding, latent=torch.zeros(1, 0))
        world = quat_to_rotmat(g.quats)  # [1, V, 3, 3]
        local = rotmat_to_quat(rest.to(world.dtype).transpose(-1, -2) @ world)  # in the triangle's frame
        dynamic = g.replace(means=means.to(g.means.dtype), quats=local)
        return Rig(dynamic=dynamic, binding=self.binding, latent=torch.zeros(1, 0))

    def drive(self, avatar: Avatar, params: HeadParams) -> Gaussians:
        hm = self.head_model
        rig = avatar.rig
        verts = self._vertices(params)  # [B, V, 3]
        means, frames = posed_frames(rig.binding, verts, hm.faces)  # [B, V, 3], [B, V, 3, 3]
        d = rig.dynamic
        if self.official:  # GAGAvatar keeps the rotations fixed in the world, global pose or not
            return d.moved(means, d.quats.expand(means.shape[0], -1, -1))
        q = d.quats  # [1, V, 4] (w, x, y, z) in each triangle's frame
        local = quat_to_rotmat(q)  # [1, V, 3, 3]
        return d.moved(means, rotmat_to_quat(frames @ local.to(frames.dtype)))


@hookimpl
def gshead_register_drivers(register) -> None:
    register.add(ExpressionGaussiansConfig, ExpressionGaussiansDriver)


__all__ = ["ExpressionGaussiansConfig", "ExpressionGaussiansDriver", "official_covariance", "vertex_binding"]
