"""``frontal``: assumes a centred, frontal portrait; no fitting at all.

Every image gets the head model's neutral parameters and the same camera on the +z axis looking
at the origin. Good enough for the reference pipeline and for tests; a real tracker fits both.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from gshead.core.components import BuildContext
from gshead.core.config import TrackerConfig
from gshead.core.errors import ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, Tracked


class FrontalTrackerConfig(TrackerConfig):
    """Neutral head parameters and a fixed frontal camera for every image (centred portraits)."""

    name: Literal["frontal"] = "frontal"
    distance: float = Field(1.0, gt=0.0)
    """Distance from the camera to the head's centre (the world origin), in head-model units (metres)."""
    fov_degrees: float = Field(18.0, gt=0.0, lt=180.0)
    """Horizontal field of view of the camera, in degrees."""


class FrontalTracker(nn.Module):
    """Images [B, 3, H, W] -> neutral HeadParams [B] and a frontal Camera [B] of size W x H."""

    def __init__(self, config: FrontalTrackerConfig, context: BuildContext) -> None:
        super().__init__()
        if context.head_model is None:
            raise ShapeError("frontal: BuildContext.head_model is None; expected the pipeline's head model")
        self.config = config
        # A bound method, not the model itself: the head model may be an nn.Module, and storing it
        # would register it as a submodule (its weights duplicated in this tracker's state dict).
        self._neutral = context.head_model.neutral

    def track(self, images: Tensor) -> Tracked:
        # images: [B, 3, H, W] in [0, 1]
        if images.dim() != 4 or images.shape[1] != 3:
            raise ShapeError(f"frontal: expected an image batch [B, 3, H, W], got {list(images.shape)}")
        b, _, h, w = images.shape
        camera = Camera.frontal(self.config.distance, self.config.fov_degrees, w, h, b, dtype=images.dtype)
        params = self._neutral(b)
        return Tracked(params=params.to(images.device), camera=camera.to(images.device))

    def forward(self, images: Tensor) -> Tracked:
        return self.track(images)


@hookimpl
def gshead_register_trackers(register) -> None:
    register(FrontalTrackerConfig, FrontalTracker)
