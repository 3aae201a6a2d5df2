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
The ``Rig`` stores

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
and three MLPs over M Gaussians: nothing depends on the encoder.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from gshead.core.components import BuildContext
from gshead.core.config import DriverConfig
from gshead.core.errors import ConfigError, ShapeError
from gshead.core.geometry import posed_frames, quat_to_rotmat, rotmat_to_quat
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
        hm = self.head_model
        verts = hm(source).vertices  # [1, V, 3] the source as in the portrait
        c = self.config
        gaussians, binding, local_rot, code = surface_gaussians(
            self.anchor_head, features, camera, self.face_index, self.barycentric, verts, verts, hm.faces,
            c.anchors_per_face, c.size, c.thickness, c.max_offset, c.max_log_scale,
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
        rig = avatar.rig
        m, b = rig.dynamic.count, params.batch_size
        codes = rig.latent.reshape(m, self.config.code_dim)  # [M, K]
        region = self.regions(avatar)  # [M]
        raw = torch.zeros(b, m, 3, dtype=codes.dtype, device=codes.device)
        for g, (head, condition) in enumerate(zip(self.heads, self.conditions(params))):
            idx = (region == g).nonzero()[:, 0]
            if idx.numel():
                raw = raw.index_copy(1, idx, head(condition.to(codes), codes[idx]))
        return self.config.max_control_offset * self.head_size * torch.tanh(raw)

    def drive(self, avatar: Avatar, params: HeadParams) -> Gaussians:
        hm = self.head_model
        rig = avatar.rig
        b = params.batch_size
        params = params.replace(identity=avatar.source.identity.expand(b, -1))
        verts = hm(params).vertices  # [B, V, 3]
        points, rot = posed_frames(rig.binding, verts, hm.faces)  # [B, M, 3], [B, M, 3, 3]
        means = points + (rot @ self.offsets(avatar, params)[..., None])[..., 0]
        local = quat_to_rotmat(rig.dynamic.quats)  # [1, M, 3, 3]
        d = rig.dynamic
        return d.moved(means, rotmat_to_quat(rot @ local))


@hookimpl
def gshead_register_drivers(register) -> None:
    register.add(LightControlConfig, LightControlDriver)


__all__ = ["ControlHead", "LightControlConfig", "LightControlDriver"]
