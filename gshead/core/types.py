"""Typed, frozen containers that cross component boundaries.

Every tensor field carries its shape in a comment. ``B`` is the batch, ``N`` a Gaussian count,
``C`` feature channels, ``V`` head-model vertices. Containers check their shapes when built
(cheap: integer comparisons only), so a component that returns a wrong shape fails where it
returns, not three stages later.

Conventions (the same as gsplat and the original 3DGS):
- world units are the head model's (metres for the built-in models); y up, z out of the face;
- cameras are OpenCV style: x right, y down, z forward; intrinsics in pixels;
- quaternions are (w, x, y, z); scales are standard deviations (linear, not log);
- images are float in [0, 1], channels first.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gshead.core.errors import ShapeError


def _expect(name: str, tensor: Tensor, shape: tuple[int | None, ...]) -> None:
    """Raise ShapeError unless ``tensor`` has ``len(shape)`` dims matching the non-None sizes."""
    if not isinstance(tensor, Tensor):
        raise ShapeError(f"{name}: expected a tensor, got {type(tensor).__name__}")
    ok = tensor.dim() == len(shape) and all(s is None or s == t for s, t in zip(shape, tensor.shape))
    if not ok:
        want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise ShapeError(f"{name}: expected shape {want}, got {list(tensor.shape)}")


class _Container:
    """Shared helpers for the frozen tensor containers below."""

    def replace(self, **changes: Any):
        """A copy with some fields replaced (the original is never modified)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        """Flat ``{"prefix.field": tensor}`` view, recursing into nested containers (for files)."""
        out: dict[str, Tensor] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            key = f"{prefix}{f.name}"
            if isinstance(value, Tensor):
                out[key] = value
            elif isinstance(value, _Container):
                out.update(value.tensors(prefix=key + "."))
        return out

    def to(self, device: torch.device | str):
        """The same container with every tensor moved to ``device``."""
        changes = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, (Tensor, _Container)):
                changes[f.name] = value.to(device)
        return self.replace(**changes)


@dataclass(frozen=True)
class Gaussians(_Container):
    """A batch of 3D Gaussians with ``C`` feature channels each."""

    means: Tensor  # [B, N, 3] centres in world space
    quats: Tensor  # [B, N, 4] rotations (w, x, y, z), unit norm
    scales: Tensor  # [B, N, 3] standard deviations along the local axes, > 0
    opacities: Tensor  # [B, N] in [0, 1]
    features: Tensor  # [B, N, C] rendered channels; 0..2 are RGB in [0, 1] by convention

    def __post_init__(self) -> None:
        _expect("Gaussians.means", self.means, (None, None, 3))
        b, n = self.means.shape[:2]
        _expect("Gaussians.quats", self.quats, (b, n, 4))
        _expect("Gaussians.scales", self.scales, (b, n, 3))
        _expect("Gaussians.opacities", self.opacities, (b, n))
        _expect("Gaussians.features", self.features, (b, n, None))

    @property
    def batch_size(self) -> int:
        return self.means.shape[0]

    @property
    def count(self) -> int:
        return self.means.shape[1]

    @property
    def channels(self) -> int:
        return self.features.shape[2]

    def expand(self, batch_size: int) -> Gaussians:
        """Broadcast a batch of one to ``batch_size`` without copying."""
        if self.batch_size == batch_size:
            return self
        if self.batch_size != 1:
            raise ShapeError(f"Gaussians: cannot expand batch {self.batch_size} to {batch_size}")
        return Gaussians(*(t.expand(batch_size, *t.shape[1:]) for t in self.tensors().values()))

    def moved(self, means: Tensor, quats: Tensor) -> Gaussians:
        """These Gaussians (a batch of one) at new ``means`` [B, N, 3] and ``quats`` [B, N, 4];
        scales, opacities and features are broadcast to B without copying."""
        b = means.shape[0]
        return Gaussians(
            means=means,
            quats=quats,
            scales=self.scales.expand(b, -1, -1),
            opacities=self.opacities.expand(b, -1),
            features=self.features.expand(b, -1, -1),
        )

    @staticmethod
    def cat(parts: list[Gaussians]) -> Gaussians:
        """Concatenate along the Gaussian axis (batches broadcast from 1)."""
        b = max(p.batch_size for p in parts)
        parts = [p.expand(b) for p in parts]
        return Gaussians(
            means=torch.cat([p.means for p in parts], 1),
            quats=torch.cat([p.quats for p in parts], 1),
            scales=torch.cat([p.scales for p in parts], 1),
            opacities=torch.cat([p.opacities for p in parts], 1),
            features=torch.cat([p.features for p in parts], 1),
        )


@dataclass(frozen=True)
class Camera(_Container):
    """A batch of pinhole cameras sharing one image size."""

    world_to_camera: Tensor  # [B, 4, 4] OpenCV convention (x right, y down, z forward)
    intrinsics: Tensor  # [B, 3, 3] pixels: [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]
    width: int
    height: int

    def __post_init__(self) -> None:
        _expect("Camera.world_to_camera", self.world_to_camera, (None, 4, 4))
        _expect("Camera.intrinsics", self.intrinsics, (self.world_to_camera.shape[0], 3, 3))
        if self.width <= 0 or self.height <= 0:
            raise ShapeError(f"Camera: image size must be positive, got {self.width}x{self.height}")

    @property
    def batch_size(self) -> int:
        return self.world_to_camera.shape[0]

    def resized(self, width: int, height: int) -> Camera:
        """The same view rendered at another image size (intrinsics rescaled)."""
        scale = torch.tensor(
            [[width / self.width], [height / self.height], [1.0]],
            dtype=self.intrinsics.dtype,
            device=self.intrinsics.device,
        )
        return Camera(self.world_to_camera, self.intrinsics * scale, width, height)

    def moved(self, object_to_world: Tensor) -> Camera:
        """The camera that sees the scene as if the scene had been moved by ``object_to_world``.

        ``object_to_world``: [B, 4, 4] or [1, 4, 4]. Head pose is applied this way, so the
        avatar's tensors never move.
        """
        w2c = self.world_to_camera @ object_to_world
        k = self.intrinsics.expand(w2c.shape[0], 3, 3)
        return Camera(w2c, k, self.width, self.height)

    def expand(self, batch_size: int) -> Camera:
        if self.batch_size == batch_size:
            return self
        return Camera(
            self.world_to_camera.expand(batch_size, 4, 4),
            self.intrinsics.expand(batch_size, 3, 3),
            self.width,
            self.height,
        )

    @staticmethod
    def frontal(
        distance: float,
        fov_degrees: float,
        width: int,
        height: int,
        batch_size: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> Camera:
        """A camera on the +z axis looking at the origin, y up in the world, square pixels."""
        w2c = torch.eye(4, dtype=dtype)
        w2c[1, 1] = -1.0
        w2c[2, 2] = -1.0
        w2c[2, 3] = distance
        f = 0.5 * width / torch.tan(torch.deg2rad(torch.tensor(fov_degrees / 2.0, dtype=torch.float64)))
        k = torch.tensor([[f, 0, width / 2.0], [0, f, height / 2.0], [0, 0, 1]], dtype=dtype)
        return Camera(
            w2c.expand(batch_size, 4, 4).clone(), k.expand(batch_size, 3, 3).clone(), width, height
        )


@dataclass(frozen=True)
class HeadParams(_Container):
    """Parameters of a morphable head model; sizes ``I`` and ``E`` depend on the model."""

    identity: Tensor  # [B, I] identity (shape) coefficients
    expression: Tensor  # [B, E] expression coefficients, named by the head model
    jaw: Tensor  # [B, 3] jaw rotation, axis-angle, radians
    eyes: Tensor  # [B, 6] left then right eyeball rotation, axis-angle, radians
    rotation: Tensor  # [B, 3] head rotation, axis-angle, applied as camera motion
    translation: Tensor  # [B, 3] head translation, model units, applied as camera motion
    # [B, 3] or None (the default, and what every tracker writes): a rotation of the head *mesh*
    # about the head model's root joint 0, axis-angle (FLAME's "global pose", posecode[:3] of
    # GAGAvatar_track files). Not camera motion: a driver that says ``applies_root`` (GAGAvatar's
    # ``expression-gaussians`` under ``compat: official``) turns only the mesh-bound Gaussians;
    # for every other driver ``drive_frames`` folds it into ``rotation``/``translation``
    # (``root_as_pose``), i.e. the whole head turns about joint 0.
    root: Tensor | None = None

    def __post_init__(self) -> None:
        _expect("HeadParams.identity", self.identity, (None, None))
        b = self.identity.shape[0]
        _expect("HeadParams.expression", self.expression, (b, None))
        _expect("HeadParams.jaw", self.jaw, (b, 3))
        _expect("HeadParams.eyes", self.eyes, (b, 6))
        _expect("HeadParams.rotation", self.rotation, (b, 3))
        _expect("HeadParams.translation", self.translation, (b, 3))
        if self.root is not None:
            _expect("HeadParams.root", self.root, (b, 3))

    @property
    def batch_size(self) -> int:
        return self.identity.shape[0]

    @staticmethod
    def zeros(identity_dim: int, expression_dim: int, batch_size: int = 1) -> HeadParams:
        """Neutral parameters: the template head, mouth closed, looking ahead."""
        z = lambda n: torch.zeros(batch_size, n)  # noqa: E731
        return HeadParams(z(identity_dim), z(expression_dim), z(3), z(6), z(3), z(3))

    def pose_matrix(self) -> Tensor:
        """Rigid head pose as [B, 4, 4] object-to-world matrices."""
        import roma

        m = torch.eye(4, dtype=self.rotation.dtype, device=self.rotation.device).repeat(self.batch_size, 1, 1)
        m[:, :3, :3] = roma.rotvec_to_rotmat(self.rotation)
        m[:, :3, 3] = self.translation
        return m

    def root_as_pose(self, joint0: Tensor) -> HeadParams:
        """These parameters with ``root`` (about ``joint0`` [B, 3], the head model's root joint for
        them, ``HeadMesh.joints[:, 0]``) folded into the head pose: ``pose_matrix()`` becomes
        ``pose @ [R_root | joint0 - R_root joint0]`` and ``root`` None. Without a root: ``self``."""
        if self.root is None:
            return self
        import roma

        r_root = roma.rotvec_to_rotmat(self.root)  # [B, 3, 3]
        j = joint0.to(r_root.dtype)
        pivot = j - (r_root @ j[..., None])[..., 0]  # [B, 3]
        r_pose = roma.rotvec_to_rotmat(self.rotation.to(r_root.dtype))
        return self.replace(
            rotation=roma.rotmat_to_rotvec(r_pose @ r_root).to(self.rotation.dtype),
            translation=(self.translation + (r_pose @ pivot[..., None])[..., 0]).to(self.translation.dtype),
            root=None,
        )

    def select(self, index: int | slice) -> HeadParams:
        """Frames ``index`` of a sequence (keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return HeadParams(**{k: v[index] for k, v in self.tensors().items()})


@dataclass(frozen=True)
class HeadMesh(_Container):
    """What a head model outputs for a batch of parameters (no global pose applied)."""

    vertices: Tensor  # [B, V, 3]
    landmarks: Tensor  # [B, L, 3] from the model's landmark embedding
    joints: Tensor  # [B, J, 3] posed joint positions


@dataclass(frozen=True)
class FeatureMaps(_Container):
    """What an encoder returns for a batch of images."""

    image: Tensor  # [B, 3, H, W] the source image the features came from, in [0, 1]
    local: tuple[Tensor, ...]  # one [B, C_l, h_l, w_l] map per level (e.g. ViT layers)
    global_token: Tensor  # [B, G] global feature (e.g. the CLS token)

    def __post_init__(self) -> None:
        _expect("FeatureMaps.image", self.image, (None, 3, None, None))
        b = self.image.shape[0]
        if not self.local:
            raise ShapeError("FeatureMaps.local: expected at least one feature map")
        for i, m in enumerate(self.local):
            _expect(f"FeatureMaps.local[{i}]", m, (b, None, None, None))
        _expect("FeatureMaps.global_token", self.global_token, (b, None))


@dataclass(frozen=True)
class MeshBinding(_Container):
    """Where each driven Gaussian rides on the head mesh: a triangle, a point in it, an offset."""

    face_index: Tensor  # [M] long, triangle index into the head model's faces
    barycentric: Tensor  # [M, 3] weights of the triangle's three corners (sum to 1)
    offset: Tensor  # [M, 3] offset in the triangle's frame (edge, in-plane normal, face normal)

    def __post_init__(self) -> None:
        _expect("MeshBinding.face_index", self.face_index, (None,))
        m = self.face_index.shape[0]
        _expect("MeshBinding.barycentric", self.barycentric, (m, 3))
        _expect("MeshBinding.offset", self.offset, (m, 3))


@dataclass(frozen=True)
class Rig(_Container):
    """The driven part of an avatar, made once by the driver at reconstruction."""

    dynamic: Gaussians  # [1, M] rest-state Gaussians (positions and rotations in the binding frame)
    binding: MeshBinding  # [M] one binding per dynamic Gaussian
    latent: Tensor  # [1, L] per-avatar code for the driver (L may be 0); never encoder-sized

    def __post_init__(self) -> None:
        if self.dynamic.count != self.binding.face_index.shape[0]:
            raise ShapeError(
                f"Rig: {self.dynamic.count} dynamic Gaussians but "
                f"{self.binding.face_index.shape[0]} bindings"
            )
        _expect("Rig.latent", self.latent, (1, None))


@dataclass(frozen=True)
class Provenance:
    """Where an avatar came from: enough to rebuild its driving components and to refuse a mismatch."""

    pipeline: str  # the validated pipeline config, as JSON
    head_model: str  # registered head-model name
    gshead_version: str
    torch_version: str
    created: str  # ISO 8601 time


@dataclass(frozen=True)
class Avatar(_Container):
    """A reconstructed head: immutable once made; driving only reads it."""

    static: Gaussians  # [1, Ns] Gaussians that never move relative to the head
    rig: Rig  # the driver's part: [1, M] dynamic Gaussians bound to the head mesh
    source: HeadParams  # [1] head parameters of the source portrait (identity kept when driving)
    camera: Camera  # [1] camera of the source portrait
    provenance: Provenance
    background: Tensor | None = None  # [1, C, S, S] feature image behind the avatar (background: static)
    body: Tensor | None = None  # [1, Ns] per static Gaussian: 1 stays with the still torso, 0 moves with the head (torso: still)


@dataclass(frozen=True)
class Render(_Container):
    """What a rasterizer returns."""

    features: Tensor  # [B, C, H, W] blended feature channels (background included)
    alpha: Tensor  # [B, 1, H, W] accumulated opacity
    depth: Tensor  # [B, 1, H, W] alpha-blended camera-space z (divide by alpha for expected depth)


@dataclass(frozen=True)
class CropBox:
    """A square region of an image, in pixels; it may reach past the borders (padded with black)."""

    left: float
    top: float
    side: float

    @staticmethod
    def centred(width: int, height: int) -> CropBox:
        """The largest centred square."""
        side = min(width, height)
        return CropBox((width - side) // 2, (height - side) // 2, side)


@dataclass(frozen=True)
class Located:
    """Where a ``FrameLandmarker`` found the face in a whole frame."""

    face: tuple[float, float, float]  # (left, top, side) face box in frame pixels, like a detector's
    points: Tensor  # [P, 2] the tracker's landmarks in frame pixels
    faces: int  # faces the tracker saw in the frame (0 when it did not look for others)


@dataclass(frozen=True)
class Tracked(_Container):
    """A tracker's estimate for a batch of images."""

    params: HeadParams  # [B]
    camera: Camera  # [B] (head pose lives in params.rotation/translation)


@dataclass(frozen=True)
class ReenactmentSample(_Container):
    """One training / evaluation item: a source portrait of one person and T target frames.

    For self-reenactment the targets show the same person (their images are the ground truth);
    for cross-reenactment they show someone else and only their tracked parameters are used.
    Images are crops at the pipeline's ``source_size`` S, in [0, 1].
    """

    source_image: Tensor  # [1, 3, S, S]
    source: HeadParams  # [1] the source's head parameters
    source_camera: Camera  # [1] the source's camera (pose lives in ``source``)
    target_images: Tensor  # [T, 3, S, S]
    targets: HeadParams  # [T] the targets' head parameters
    target_camera: Camera  # [T] the targets' cameras

    def __post_init__(self) -> None:
        _expect("ReenactmentSample.source_image", self.source_image, (1, 3, None, None))
        s = self.source_image.shape[-1]
        t = self.targets.batch_size
        _expect("ReenactmentSample.target_images", self.target_images, (t, 3, s, s))
        if self.source.batch_size != 1 or self.source_camera.batch_size != 1:
            raise ShapeError("ReenactmentSample: source params and camera must have batch 1")
        if self.target_camera.batch_size != t:
            raise ShapeError(
                f"ReenactmentSample: {t} targets but {self.target_camera.batch_size} target cameras"
            )

    @property
    def size(self) -> int:
        return self.source_image.shape[-1]

    @property
    def frames(self) -> int:
        return self.targets.batch_size
