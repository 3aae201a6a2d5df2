"""``light-control``: the dynamic Gaussians and the ultra-light control network that moves them.

The reenactment half of the reconstruction/reenactment separated method (``mesh-anchored`` makes
the static half). Which triangles are dynamic, and which of three regions each belongs to, is a
property of the head model alone, computed once when the driver is built (``face_motion`` of
``gshead.plugins._shared.face_motion``, the table the lifter reads too): a triangle is dynamic when
the eye, jaw or expression probes move it by more than ``motion_threshold`` of the head's size, and
its region (eyes, mouth, rest) is the probe group that moves it most. So it works for any head
model, whatever its vertex count or naming.

``prepare`` (once, at reconstruction) puts ``anchors_per_face`` seeded points on every dynamic
triangle of the source mesh and predicts their attributes from the sampled encoder features
exactly as ``mesh-anchored`` does (the same ``AnchorHead`` and ``surface_gaussians``, from
``gshead.plugins._shared.surface``), plus a per-Gaussian latent code of ``code_dim`` channels from
extra rows of that head's output layer: its size is fixed by the config, never by the encoder.
With ``appearance_prior`` the anchors the portrait does not show read the prior's colour
(``gshead.plugins._shared.appearance``: a dark cavity inside the mouth, the mirror image or the
nearest visible colour elsewhere), except on the eye region's triangles, which keep the sampled
colour (see ``prepare``). The ``Rig`` stores

- ``dynamic``: the Gaussians at rest on the source mesh; ``quats`` are rotations *in the triangle's
  frame* (the binding frame), composed with the posed frame every frame;
- ``binding``: triangle, barycentric point and predicted normal offset of each Gaussian;
- ``latent``: the codes, flattened to [1, M * code_dim].

``drive`` (per frame) reads only the avatar and the frame's parameters: the head model evaluated for
the frame (expression, jaw, eyes; the avatar's identity) carries each Gaussian with its triangle,
then three small control heads add offsets in the triangle's frame, each for the Gaussians of its
own region only, from its own part of the condition plus the Gaussian's code:

=====  ===========================================  =================================
head   condition                                     moves
=====  ===========================================  =================================
eyes   eyeball rotations (6) + eye units             eye-region Gaussians
mouth  jaw rotation (3) + mouth units                mouth-region Gaussians
rest   remaining expression units                    rest-region Gaussians
=====  ===========================================  =================================

Units are split by name for ARKit-style names, else by index halves (``expression_groups``). So
eyes, mouth and the rest of the expression are controlled independently: changing only the eye
parameters changes only the eye region's offsets. Offsets are ``max_control_offset`` x head size x
tanh(raw); the heads' output layers start at zero, so an untrained driver puts every Gaussian
exactly at its bound point on the posed mesh. Per-frame work is one head-model evaluation, a gather
and three MLPs over M Gaussians: nothing depends on the encoder. Without autograd (a driving
session) what no frame changes is computed once per avatar (``_avatar_constants``: the code half
of each head's first layer, region indices, rest rotations) and kept while the weights are
unchanged; triangle frames and their quaternions are computed once per bound triangle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gshead.core.components import BuildContext
from gshead.core.config import DriverConfig
from gshead.core.errors import ConfigError, ShapeError
from gshead.core.geometry import frames_from_corners, quat_multiply, rotmat_to_quat
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Avatar, Camera, FeatureMaps, Gaussians, HeadParams, Rig
from gshead.plugins._shared.face_motion import GROUP_NAMES, expression_groups, face_motion
from gshead.plugins._shared.surface import (
    AnchorHead,
    SurfaceGaussianSettings,
    seeded_anchors,
    surface_gaussians,
)


class LightControlConfig(DriverConfig, SurfaceGaussianSettings):
    """Dynamic Gaussians on the moving triangles, posed by the mesh plus three ultra-light control heads."""

    test_fields: ClassVar[dict[str, Any]] = {"anchors_per_face": 1}
    pipeline_shared: ClassVar[tuple[str, ...]] = ("motion_threshold",)

    name: Literal["light-control"] = "light-control"
    anchors_per_face: int = Field(2, ge=1, le=64)
    """Dynamic Gaussians per moving triangle: the centroid plus seeded uniform points."""
    motion_threshold: float = Field(0.01, gt=0.0)
    """Triangles moving more than this fraction of the head's size under the probes are dynamic.
    Shared with the lifter's ``motion_threshold`` (``mesh-anchored``): the pipeline refuses two
    different values, so static and dynamic Gaussians partition the mesh; the lifter's null
    (every triangle static) is refused next to this driver."""
    hidden: int = Field(64, ge=4, le=1024)
    """Width of the per-anchor MLP that predicts attributes and codes at reconstruction."""
    code_dim: int = Field(16, ge=0, le=256)
    """Channels of each Gaussian's latent code (independent of the encoder)."""
    control_hidden: int = Field(64, ge=4, le=1024)
    """Width of each control head."""
    control_layers: int = Field(2, ge=1, le=8)
    """Hidden layers of each control head."""
    max_control_parameters: int = Field(1_000_000, ge=1)
    """Budget of the three control heads together; building a larger one is refused."""
    max_control_offset: float = Field(0.05, gt=0.0)
    """Largest control offset per axis, as a fraction of the head's size (tanh-bounded)."""


class ControlHead(nn.Module):
    """Condition [B, D] + codes [M, K] -> offsets [B, M, 3]; the first layer is split so the condition
    part is computed once per frame and the code part once per Gaussian."""

    def __init__(self, condition_dim: int, code_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.condition = nn.Linear(condition_dim, hidden, bias=False) if condition_dim else None
        self.code = nn.Linear(code_dim, hidden) if code_dim else None
        self.bias = None if code_dim else nn.Parameter(torch.zeros(hidden))
        body: list[nn.Module] = [nn.SiLU()]
        for _ in range(layers - 1):
            body += [nn.Linear(hidden, hidden), nn.SiLU()]
        self.body = nn.Sequential(*body)
        self.out = nn.Linear(hidden, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, condition: Tensor, codes: Tensor) -> Tensor:
        if self.code is not None:
            h = self.code(codes)[None]  # [1, M, H]
        else:
            h = self.bias.expand(1, codes.shape[0], -1)
        if self.condition is not None:
            h = h + self.condition(condition)[:, None]  # [B, M, H]
        h = h.expand(condition.shape[0], -1, -1)
        return self.out(self.body(h))  # [B, M, 3]


@dataclass(frozen=True)
class _AvatarConstants:
    """Per-avatar constants of ``LightControlDriver.drive``."""

    region_index: tuple[Tensor, ...]  # per control head: indices [Mg] of its rig Gaussians
    faces: Tensor  # [Fd] the distinct triangles the rig is bound to
    face_of: Tensor  # [M] each rig Gaussian's position in ``faces``
    local_quats: Tensor  # [1, M, 4] unit rotations in the binding frames
    code_hidden: tuple[Tensor, ...] | None  # per head: code half of its first layer [1, Mg, H] (no autograd)


class LightControlDriver(nn.Module):
    """See the module docstring."""

    def __init__(self, config: LightControlConfig, context: BuildContext) -> None:
        super().__init__()
        hm = context.head_model
        if hm is None:
            raise ValueError("light-control needs a head model in its build context")
        self.config = config
        # Shared with the pipeline, not a submodule: its buffers are not the driver's weights.
        self.__dict__["head_model"] = hm
        self.anchor_head = AnchorHead(
            context.feature_channels,
            context.encoder_channels,
            context.encoder_global_channels,
            config.hidden,
            config.initial_opacity,
            extra_outputs=config.code_dim,
        )
        self.groups = expression_groups(tuple(hm.expression_names))  # unit indices per region
        dims = (6 + len(self.groups[0]), 3 + len(self.groups[1]), len(self.groups[2]))
        self.heads = nn.ModuleList(
            ControlHead(d, config.code_dim, config.control_hidden, config.control_layers) for d in dims
        )
        count = self.control_parameters()
        if count > config.max_control_parameters:
            raise ConfigError(
                f"light-control: the control heads have {count:,} parameters, over max_control_parameters "
                f"({config.max_control_parameters:,}); lower control_hidden/control_layers/code_dim"
            )

        motion = face_motion(hm)  # [F, 3]
        region = torch.where(motion.amax(1) > config.motion_threshold, motion.argmax(1), -1)  # [F]
        moving = torch.cat([(region == g).nonzero()[:, 0] for g in range(len(GROUP_NAMES))])  # by region
        face_index, bary = seeded_anchors(moving, config.anchors_per_face, config.seed)
        # [F] region of each triangle: 0 eyes, 1 mouth, 2 rest, -1 static (the lifter's)
        self.register_buffer("face_region", region, persistent=False)
        self.register_buffer("face_index", face_index, persistent=False)  # [M]
        self.register_buffer("barycentric", bary, persistent=False)  # [M, 3]
        template = hm.template
        self.head_size = float((template.amax(0) - template.amin(0)).norm())
        self._constants: tuple[Any, Rig, _AvatarConstants] | None = None  # (key, rig, constants)

    def control_parameters(self) -> int:
        """Parameters of the per-frame control network (the three heads)."""
        return sum(p.numel() for p in self.heads.parameters())

    @property
    def count(self) -> int:
        """Number of dynamic Gaussians this driver makes."""
        return self.face_index.shape[0]

    def prepare(self, features: FeatureMaps, source: HeadParams, camera: Camera, static: Gaussians) -> Rig:
        if features.image.shape[0] != 1 or source.batch_size != 1:
            raise ShapeError("light-control: prepare makes one avatar; expected a batch of one")
        from gshead.plugins._shared.surface import module_prior

        hm = self.head_model
        verts = hm(source).vertices  # [1, V, 3] the source as in the portrait
        c = self.config
        prior = module_prior(self, hm) if c.appearance_prior else None  # tables made once per driver
        # The eye region (eyeballs and lids) keeps its sampled colours: a lid folded away in an
        # open-eyed portrait lies just behind the visible lid, whose colour that pixel already is;
        # with the prior there, the independent judge read shut eyes as half open (eye aspect ratio
        # 0.56 of open instead of 0.31 on the astronaut: an iris-coloured patch shows through).
        eyes = self.face_region[self.face_index] == 0  # [M]
        gaussians, binding, local_rot, code = surface_gaussians(
            self.anchor_head, features, camera, self.face_index, self.barycentric, verts, verts, hm.faces,
            c.anchors_per_face, c.size, c.thickness, c.max_offset, c.max_log_scale, prior, eyes,
        )  # fmt: skip
        dynamic = gaussians.replace(quats=rotmat_to_quat(local_rot))  # rotations in the binding frame
        return Rig(dynamic=dynamic, binding=binding, latent=code.reshape(1, -1))

    def regions(self, avatar: Avatar) -> Tensor:
        """Region of each rig Gaussian [M]: 0 eyes, 1 mouth, 2 rest."""
        return self.face_region[avatar.rig.binding.face_index]

    def conditions(self, params: HeadParams) -> tuple[Tensor, Tensor, Tensor]:
        """Each head's part of the frame's condition: eyes [B, 6+Ne], mouth [B, 3+Nm], rest [B, Nr]."""
        expr = params.expression
        eyes, mouth, rest = (expr[:, idx] for idx in self.groups)
        return torch.cat([params.eyes, eyes], 1), torch.cat([params.jaw, mouth], 1), rest

    def offsets(self, avatar: Avatar, params: HeadParams) -> Tensor:
        """Control offsets [B, M, 3] in each Gaussian's triangle frame, model units."""
        return self._offsets(avatar, params, self._avatar_constants(avatar))

    def _offsets(self, avatar: Avatar, params: HeadParams, parts: _AvatarConstants) -> Tensor:
        rig = avatar.rig
        m, b = rig.dynamic.count, params.batch_size
        codes = rig.latent.reshape(m, self.config.code_dim)  # [M, K]
        raw = torch.zeros(b, m, 3, dtype=codes.dtype, device=codes.device)
        for g, (head, condition) in enumerate(zip(self.heads, self.conditions(params))):
            idx = parts.region_index[g]
            if not idx.numel():
                continue
            if parts.code_hidden is None:  # autograd on: through the whole head
                out = head(condition.to(codes), codes[idx])
            else:  # the code half of the first layer, computed once for this avatar
                h = parts.code_hidden[g]  # [1, Mg, H]
                if head.condition is not None:
                    h = h + head.condition(condition.to(codes))[:, None]
                out = head.out(head.body(h.expand(b, -1, -1)))
            raw = raw.index_copy(1, idx, out)
        return self.config.max_control_offset * self.head_size * torch.tanh(raw)

    def drive(self, avatar: Avatar, params: HeadParams) -> Gaussians:
        hm = self.head_model
        rig = avatar.rig
        b = params.batch_size
        parts = self._avatar_constants(avatar)
        params = params.replace(identity=avatar.source.identity.expand(b, -1))
        verts = hm(params).vertices  # [B, V, 3]
        # frames once per bound triangle (anchors_per_face Gaussians share one), then per Gaussian
        corners = verts[:, hm.faces[parts.faces]]  # [B, Fd, 3, 3]
        face_rot = frames_from_corners(corners)  # [B, Fd, 3, 3]
        rot = face_rot[:, parts.face_of]  # [B, M, 3, 3]
        binding = rig.binding
        anchor = (binding.barycentric.to(corners)[None, :, :, None] * corners[:, parts.face_of]).sum(2)
        offset = (
            binding.offset.to(corners)[None, :, :, None] + self._offsets(avatar, params, parts)[..., None]
        )
        means = anchor + (rot @ offset)[..., 0]  # [B, M, 3]
        quats = quat_multiply(rotmat_to_quat(face_rot)[:, parts.face_of], parts.local_quats)
        return rig.dynamic.moved(means, quats)

    def _avatar_constants(self, avatar: Avatar) -> _AvatarConstants:
        """What ``drive`` needs of ``avatar`` that no frame changes: computed once per avatar and
        kept (for the last avatar driven) while autograd is off and the weights are unchanged;
        rebuilt every call otherwise, so training sees every gradient."""
        rig = avatar.rig
        cached = not torch.is_grad_enabled()
        key = (id(rig), rig.latent.data_ptr(), tuple(p._version for p in self.parameters()))
        if cached and self._constants is not None and self._constants[0] == key:
            return self._constants[2]
        region = self.regions(avatar)  # [M]
        region_index = tuple((region == g).nonzero()[:, 0] for g in range(len(self.heads)))
        faces, face_of = torch.unique(rig.binding.face_index, return_inverse=True)  # [Fd], [M]
        local = F.normalize(rig.dynamic.quats, dim=-1)  # [1, M, 4] rotations in the binding frames
        code_hidden = None
        if cached:
            codes = rig.latent.reshape(rig.dynamic.count, self.config.code_dim)
            code_hidden = tuple(
                head.code(codes[idx])[None] if head.code is not None else head.bias.expand(1, idx.numel(), -1)
                for head, idx in zip(self.heads, region_index)
            )
        parts = _AvatarConstants(region_index, faces, face_of, local, code_hidden)
        if cached:  # the rig is kept alive with its constants, so its id cannot be reused meanwhile
            self._constants = (key, rig, parts)
        return parts


@hookimpl
def gshead_register_drivers(register) -> None:
    register.add(LightControlConfig, LightControlDriver)


__all__ = ["ControlHead", "LightControlConfig", "LightControlDriver"]
