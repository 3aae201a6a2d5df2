"""What each kind of component must provide, and what it is given when built.

Components are ``torch.nn.Module`` subclasses (so weights, devices and state dicts work the
usual way), built by a factory ``factory(config, context)``; usually the class itself. The
protocols below are the whole interface the core relies on. Data flows one way:

    image -> Encoder -> FeatureMaps -> Lifter -> static Gaussians ┐
                               └-> Driver.prepare -> Rig ─────────┴-> Avatar   (once)
    HeadParams -> Driver.drive(avatar) -> Rasterizer -> Refiner -> image       (per frame)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

from torch import Tensor

from gshead.core.types import (
    Avatar,
    Camera,
    CropBox,
    FeatureMaps,
    Gaussians,
    HeadMesh,
    HeadParams,
    Render,
    Rig,
    Tracked,
)

if TYPE_CHECKING:
    from gshead.core.config import ComponentConfig

Kind = Literal["headmodel", "encoder", "lifter", "driver", "rasterizer", "refiner", "tracker"]
KINDS: tuple[Kind, ...] = ("headmodel", "encoder", "lifter", "driver", "rasterizer", "refiner", "tracker")


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


@dataclass(frozen=True)
class BuildContext:
    """What a factory is given beside its own config: the parts of the pipeline it must fit."""

    feature_channels: int  # C, the Gaussian feature channels of this pipeline
    head_model: HeadModel | None = None  # built first; None only when building a head model
    encoder_channels: tuple[int, ...] = ()  # the encoder's out_channels (for lifters/drivers)
    encoder_global_channels: int = 0  # the encoder's global_channels


@dataclass(frozen=True)
class ComponentSpec:
    """One registered component: its kind, name, config class, factory and source package."""

    kind: Kind
    name: str
    config_class: type[ComponentConfig]
    factory: object  # Callable[[ComponentConfig, BuildContext], component]
    source: str  # distribution (or plugin) that registered it

    def build(self, config: ComponentConfig, context: BuildContext):
        return self.factory(config, context)  # type: ignore[operator]
