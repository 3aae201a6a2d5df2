"""What each kind of component must provide, and what it is given when built.

Components are ``torch.nn.Module`` subclasses (so weights, devices and state dicts work the
usual way), built by a factory ``factory(config, context)``; usually the class itself. The
protocols below are the whole interface the core relies on. Data flows one way:

    image -> Encoder -> FeatureMaps -> Lifter -> static Gaussians ┐
                               └-> Driver.prepare -> Rig ─────────┴-> Avatar   (once)
    HeadParams -> Driver.drive(avatar) -> Rasterizer -> Refiner -> image       (per frame)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from gshead.core.errors import ConfigError, PluginError
from gshead.core.types import (
    Avatar,
    Camera,
    CropBox,
    FeatureMaps,
    Gaussians,
    HeadMesh,
    HeadParams,
    Located,
    Render,
    Rig,
    Tracked,
)

if TYPE_CHECKING:
    from gshead.core.registry import Registry

Kind = Literal["headmodel", "encoder", "lifter", "driver", "rasterizer", "refiner", "tracker"]


# -- base configs ---------------------------------------------------------------------------------
class ComponentConfig(BaseModel):
    """Base of every component config: frozen, unknown fields refused, docstrings as docs."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    kind: ClassVar[Kind]
    test_fields: ClassVar[dict[str, Any]] = {}  # small settings for contract tests (e.g. a tiny variant)
    pipeline_shared: ClassVar[tuple[str, ...]] = ()
    """Fields that must hold the same value in every slot of a pipeline that declares them (for
    example the lifter's and the driver's ``motion_threshold``); the pipeline config refuses a
    mismatch, naming both slots."""
    name: str

    @classmethod
    def unavailable(cls) -> str | None:
        """Why this component cannot run on this machine as configured by default (no CUDA, a
        missing package or licensed file), or None. Contract tests skip with this reason."""
        return None


class HeadModelConfig(ComponentConfig):
    """Base config of head models."""

    kind: ClassVar[Kind] = "headmodel"


class EncoderConfig(ComponentConfig):
    """Base config of encoders."""

    kind: ClassVar[Kind] = "encoder"


class LifterConfig(ComponentConfig):
    """Base config of lifters."""

    kind: ClassVar[Kind] = "lifter"


class DriverConfig(ComponentConfig):
    """Base config of drivers."""

    kind: ClassVar[Kind] = "driver"


class RasterizerConfig(ComponentConfig):
    """Base config of rasterizers."""

    kind: ClassVar[Kind] = "rasterizer"


class RefinerConfig(ComponentConfig):
    """Base config of refiners."""

    kind: ClassVar[Kind] = "refiner"


class TrackerConfig(ComponentConfig):
    """Base config of trackers.

    The face-crop settings below are shared by the trackers that crop on a detected face
    (``frontal`` with ``crop: face``, ``mediapipe``), and read by ``gshead.jobs.tracking`` from
    a ``FaceDetector`` tracker when it crops video frames itself. Trackers that do not look for
    faces (``file``, ``frontal`` with ``crop: center``) accept and ignore them.
    """

    kind: ClassVar[Kind] = "tracker"
    fits_motion: ClassVar[bool] = True
    """Whether the tracker measures expression and pose (False for ``frontal``, which gives every
    frame the neutral face): tracking a video with one that does not is refused."""
    face_scale: float = Field(2.2, gt=1.0, le=6.0)
    """Side of the square crop as a multiple of the detected face box's side."""
    face_offset: float = Field(-0.1, ge=-1.0, le=1.0)
    """Vertical shift of the crop's centre from the face box's centre, in face-box sides
    (positive: down). The crop's centre is where the head model's origin lands."""
    min_face_pixels: int = Field(40, ge=8)
    """Smallest face that counts (side of the detected face box, in pixels of the raw image);
    a smaller one is treated as no face."""


# -- protocols ------------------------------------------------------------------------------------
@runtime_checkable
class HeadModel(Protocol):
    """A morphable head: parameters in, mesh out (no global pose; that is camera motion)."""

    faces: Tensor  # [F, 3] long
    template: Tensor  # [V, 3] neutral mesh
    identity_dim: int
    expression_names: tuple[str, ...]  # one name per expression coefficient

    def forward(self, params: HeadParams) -> HeadMesh: ...

    def neutral(self, batch_size: int = 1) -> HeadParams: ...


@runtime_checkable
class LandmarkRigHead(Protocol):
    """Optional head-model ability: a landmark-only evaluator for fast landmark fits (the linear
    head models have it). ``landmark_rig(indices)`` returns an object that maps basis
    coefficients [.., I + E], jaw [.., 3] and eyes [.., 6] to those landmarks [.., K, 3] exactly,
    without evaluating the full mesh (see ``gshead.plugins.headmodels._linear.LandmarkRig``)."""

    identity_dim: int

    def landmark_rig(self, landmarks: Tensor | None = None) -> Any: ...


@runtime_checkable
class Encoder(Protocol):
    """Image features for lifting; runs once per source portrait."""

    out_channels: tuple[int, ...]  # channels of each FeatureMaps.local level
    global_channels: int  # size of FeatureMaps.global_token

    def forward(self, image: Tensor) -> FeatureMaps:  # image [B, 3, H, W] in [0, 1]
        ...


@runtime_checkable
class Lifter(Protocol):
    """Features to static Gaussians (those that never move relative to the head)."""

    def forward(self, features: FeatureMaps, source: HeadParams, camera: Camera) -> Gaussians: ...


@runtime_checkable
class Driver(Protocol):
    """Makes the rig once (``prepare``), then moves its Gaussians every frame (``drive``).

    ``drive`` may read only the avatar and the frame's head parameters: never encoder features.
    """

    def prepare(
        self, features: FeatureMaps, source: HeadParams, camera: Camera, static: Gaussians
    ) -> Rig: ...

    def drive(self, avatar: Avatar, params: HeadParams) -> Gaussians:
        """Return the rig's Gaussians posed for ``params``: [B, M] with B = params.batch_size."""
        ...


@runtime_checkable
class Rasterizer(Protocol):
    """Splats Gaussians with any channel count into images."""

    def forward(self, gaussians: Gaussians, camera: Camera, background: Tensor | None = None) -> Render:
        """``gaussians`` [B, N], ``camera`` [B], ``background`` [C] or None (zeros)."""
        ...


@runtime_checkable
class Refiner(Protocol):
    """Turns the rendered feature image into the final RGB image."""

    def forward(self, render: Render) -> Tensor:  # -> [B, 3, H, W] in [0, 1]
        ...


@runtime_checkable
class Tracker(Protocol):
    """Where the head is in a raw image, then head parameters and a camera for each crop."""

    def crop_box(self, image: Tensor) -> CropBox | None:
        """The square crop of a raw image [1, 3, H, W] that the pipeline should use (None: centred)."""
        ...

    def track(self, images: Tensor) -> Tracked:  # images [B, 3, H, W] in [0, 1], already cropped
        ...


# Optional abilities. A component declares one by having its members; callers test for it with
# ``isinstance(component, FaceDetector)`` (never by probing attribute names). They stand beside
# the kind's protocol rather than extending it, so any object with the ability qualifies. (On
# Python 3.11 setting a method to None on an instance does not remove an ability its class has.)
@runtime_checkable
class Configured(Protocol):
    """A built component that keeps the validated config it was built from (every built-in one
    does). A tracked sequence records its tracker's config from it."""

    config: ComponentConfig


@runtime_checkable
class FaceDetector(Protocol):
    """A tracker that finds face boxes in a raw image (``mediapipe``).

    ``gshead.jobs.tracking`` then crops each frame itself (largest face, smoothed over time) with
    the config's ``min_face_pixels``, ``face_scale`` and ``face_offset``, instead of calling
    ``crop_box``.
    """

    config: TrackerConfig  # the face-crop settings

    def detect_faces(self, image: Tensor) -> list[tuple[float, float, float]]:
        """Face boxes (left, top, side) in pixels of ``image`` [1, 3, H, W] in [0, 1], largest
        first; an empty list when there is no face."""
        ...


@runtime_checkable
class LandmarkTracker(Protocol):
    """A tracker that fits landmarks and says how well (``mediapipe``): per-image fit errors."""

    def track_with_error(self, images: Tensor) -> tuple[Tracked, Tensor]:
        """``track`` of crops [B, 3, H, W] in [0, 1], plus the RMS landmark reprojection error
        [B] of each, in pixels of the crop; NaN where no face was found."""
        ...


@runtime_checkable
class SequenceTracker(Protocol):
    """A tracker that can follow one video (``mediapipe``).

    ``sequence()`` returns a tracker for the frames of one sequence, given in order (crops of
    consecutive frames, in batches or one at a time), which keeps what it has learnt between
    calls: the identity, fitted once on the first frames, and the last frame's solution as the
    next frames' starting point. ``gshead.jobs.tracking`` uses one per video and per live stream.
    """

    def sequence(self) -> Tracker:
        """A fresh tracker for one sequence (with this tracker's config and abilities)."""
        ...


@runtime_checkable
class FrameLandmarker(Protocol):
    """A sequence tracker that finds its landmarks on whole frames and fits them without crops
    (the ``mediapipe`` tracker's ``sequence()``).

    ``gshead.jobs.tracking`` then asks ``locate`` for each frame (in order), places the crop box
    from the face box as for a ``FaceDetector`` (smoothed the same way), maps the landmarks into
    the crop's pixels and hands batches of them to ``fit_points``: no crop image is made.
    """

    config: TrackerConfig  # the face-crop settings

    def locate(self, frame: Tensor) -> Located | None:
        """The face in ``frame`` [1, 3, H, W] in [0, 1] (None: no face)."""
        ...

    def fit_points(self, points: Tensor, size: int) -> tuple[Tracked, Tensor]:
        """Fit landmarks [B, P, 2] given in pixels of square crops of side ``size``: (tracked [B],
        RMS fit errors [B] in pixels, NaN where a row is NaN)."""
        ...


@runtime_checkable
class Segmenter(Protocol):
    """A tracker that separates a person from the background (``mediapipe``'s selfie
    segmentation); a pipeline with ``background: static`` needs one."""

    def segment(self, image: Tensor) -> Tensor:
        """Person probability [1, 1, H, W] in [0, 1] for ``image`` [1, 3, H, W] in [0, 1]."""
        ...


# -- the table of kinds ---------------------------------------------------------------------------
@dataclass(frozen=True)
class KindInfo:
    """Everything gshead knows about one kind of component. ``KIND_TABLE`` is the only place
    where kinds are listed: hooks, base configs, protocols, pipeline slots and the order of
    building all derive from it."""

    kind: Kind
    plural: str  # the plugin folder (``gshead/plugins/<plural>/``) and the hook's suffix
    base: type[ComponentConfig]  # every config registered for this kind subclasses it
    protocol: type  # what a built component provides
    attribute: str  # the ``Pipeline`` attribute holding it
    reconstruction_only: bool  # used only to reconstruct: a driving session must never reach it
    trainable: bool  # learned by gshead's trainer (head models and trackers are fixed models)
    summary: str  # one line: what it does

    @property
    def hook(self) -> str:
        """The name of the hook that registers components of this kind."""
        return f"gshead_register_{self.plural}"


KIND_TABLE: tuple[KindInfo, ...] = (
    KindInfo("headmodel", "headmodels", HeadModelConfig, HeadModel, "head_model", False, False,
             "morphable head model: parameters -> mesh"),
    KindInfo("encoder", "encoders", EncoderConfig, Encoder, "encoder", True, True,
             "image -> FeatureMaps"),
    KindInfo("lifter", "lifters", LifterConfig, Lifter, "lifter", True, True,
             "FeatureMaps -> static Gaussians"),
    KindInfo("driver", "drivers", DriverConfig, Driver, "driver", False, True,
             "makes the rig once, poses its Gaussians per frame"),
    KindInfo("rasterizer", "rasterizers", RasterizerConfig, Rasterizer, "rasterizer", False, True,
             "Gaussians + camera -> feature image"),
    KindInfo("refiner", "refiners", RefinerConfig, Refiner, "refiner", False, True,
             "feature image -> RGB image"),
    KindInfo("tracker", "trackers", TrackerConfig, Tracker, "tracker", True, False,
             "images -> head parameters and cameras"),
)  # fmt: skip
"""The kinds in data-flow order, which is also the order a pipeline builds them in."""

KINDS: tuple[Kind, ...] = tuple(info.kind for info in KIND_TABLE)
KIND_INFO: dict[Kind, KindInfo] = {info.kind: info for info in KIND_TABLE}


def kind_info(kind: str) -> KindInfo:
    """The table row of ``kind``; one-line ``PluginError`` listing the kinds for an unknown one."""
    try:
        return KIND_INFO[kind]  # type: ignore[index]
    except KeyError:
        raise PluginError(f"unknown component kind {kind!r}; expected one of: {', '.join(KINDS)}") from None


# -- building -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BuildContext:
    """What a factory is given beside its own config: the parts of the pipeline it must fit."""

    feature_channels: int  # C, the Gaussian feature channels of this pipeline
    head_model: HeadModel | None = None  # built first; None only when building a head model
    encoder_channels: tuple[int, ...] = ()  # the encoder's out_channels (for lifters/drivers)
    encoder_global_channels: int = 0  # the encoder's global_channels
    registry: Registry | None = None  # where the component was registered (``build`` uses it)

    def build(self, kind: Kind, config: ComponentConfig | Mapping[str, Any]) -> Any:
        """Build another registered component in this context: the way a component that composes
        others (``auto`` picks ``cpu`` or ``gsplat``) gets them, without importing their modules.
        ``config`` is a validated config or a plain mapping with its ``name``."""
        if self.registry is None:
            raise PluginError(f"cannot build a {kind} here: this BuildContext has no registry")
        if isinstance(config, ComponentConfig):
            spec = self.registry.get(kind, config.name)
            validated = config
        else:
            name = config.get("name")
            if not isinstance(name, str):
                raise ConfigError(f"{kind}: missing 'name'; expected one of: {', '.join(self.registry.components(kind))}")
            spec = self.registry.get(kind, name)
            validated = spec.config_class.model_validate(dict(config))
        return spec.build(validated, self)


@dataclass(frozen=True)
class ComponentSpec:
    """One registered component: its kind, name, config class, factory and source package."""

    kind: Kind
    name: str
    config_class: type[ComponentConfig]
    factory: Any  # Callable[[ComponentConfig, BuildContext], component]
    source: str  # distribution (or plugin) that registered it

    def build(self, config: ComponentConfig, context: BuildContext) -> Any:
        return self.factory(config, context)
