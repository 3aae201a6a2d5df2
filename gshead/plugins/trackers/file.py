"""``file``: replays head parameters and cameras from a tracked-sequence file (``gshead track``).

The tracker does not look at the images at all; it answers with frames of the file:

- with ``frame`` unset, each call of ``track(images)`` returns the next ``B`` frames in order
  (B = the batch size), wrapping round at the end; the counter starts at frame 0 when the tracker
  is built (so ``gshead reconstruct`` with this tracker takes frame 0);
- with ``frame: N``, every image gets frame N (negative counts from the end).

Cameras are the file's, rescaled to the size of the images given (the file stores the crop size
it was tracked at). ``crop_box`` returns None (a centred crop): the file's crop boxes are in
pixels of the video it was tracked from, not of the image being cropped now (so the shared
face-crop fields of ``TrackerConfig`` have no effect here).

``path: demo`` replays the built-in demo motion (``gshead.io.motion``, ``demo_frames`` frames)
with a frontal camera, which needs no file (the component tests use it).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from gshead.core.components import BuildContext, TrackerConfig
from gshead.core.errors import ConfigError, ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, CropBox, HeadParams, Tracked

DEMO = "demo"


class SequenceFileTrackerConfig(TrackerConfig):
    """Head parameters and cameras read from a tracked-sequence file, frame by frame."""

    name: Literal["file"] = "file"
    path: str
    """A tracked-sequence .safetensors file (written by 'gshead track'), or 'demo' for the
    built-in demo motion."""
    frame: int | None = None
    """None: each call returns the next frames in order, wrapping round; a number: always that
    frame (negative counts from the end)."""
    demo_frames: int = Field(100, ge=4)
    """Frames of demo motion with path 'demo'."""

    test_fields: ClassVar[dict[str, Any]] = {"path": DEMO, "demo_frames": 8}


class SequenceFileTracker(nn.Module):
    """Images [B, 3, H, W] -> the file's HeadParams [B] and Camera [B] (rescaled to W x H)."""

    def __init__(self, config: SequenceFileTrackerConfig, context: BuildContext) -> None:
        super().__init__()
        head = context.head_model
        if head is None:
            raise ShapeError("file: BuildContext.head_model is None; expected the pipeline's head model")
        self.config = config
        if config.path == DEMO:
            from gshead.io.motion import demo_motion

            params = demo_motion(head, config.demo_frames)
            camera = Camera.frontal(1.0, 18.0, 512, 512, params.batch_size)
        else:
            from gshead.io.sequence import load_sequence

            seq = load_sequence(config.path)
            params, camera = seq.params, seq.camera
            want = (head.identity_dim, len(head.expression_names))
            got = (params.identity.shape[1], params.expression.shape[1])
            if got != want:
                raise ConfigError(
                    f"file: {config.path} was tracked with head model {seq.head_model!r} ({got[0]} identity, "
                    f"{got[1]} expression coefficients); this pipeline's head model has "
                    f"{want[0]} and {want[1]}"
                )
        t = params.batch_size
        if config.frame is not None and not -t <= config.frame < t:
            raise ConfigError(f"file: frame {config.frame} is outside the {t} frames of {config.path}")
        self.params: HeadParams = params.replace(**{k: v.float() for k, v in params.tensors().items()})
        self.camera: Camera = camera
        self._next = 0

    def __len__(self) -> int:
        return self.params.batch_size

    def crop_box(self, image: Tensor) -> CropBox | None:
        return None

    def frames_for(self, b: int) -> Tensor:
        """The frame numbers [b] the next ``track`` of b images returns (advances the counter)."""
        t = len(self)
        if self.config.frame is not None:
            return torch.full((b,), self.config.frame % t, dtype=torch.long)
        index = (self._next + torch.arange(b)) % t
        self._next = (self._next + b) % t
        return index

    def track(self, images: Tensor) -> Tracked:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ShapeError(f"file: expected an image batch [B, 3, H, W], got {list(images.shape)}")
        b, _, h, w = images.shape
        index = self.frames_for(b)
        params = HeadParams(**{k: v[index] for k, v in self.params.tensors().items()})
        cam = Camera(
            self.camera.world_to_camera[index],
            self.camera.intrinsics[index],
            self.camera.width,
            self.camera.height,
        ).resized(w, h)
        return Tracked(params=params.to(images.device), camera=cam.to(images.device))

    def forward(self, images: Tensor) -> Tracked:
        return self.track(images)


@hookimpl
def gshead_register_trackers(register) -> None:
    register.add(SequenceFileTrackerConfig, SequenceFileTracker)
