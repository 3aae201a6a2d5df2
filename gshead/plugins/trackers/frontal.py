"""``frontal``: assumes a frontal portrait; no fitting at all.

Every crop gets the head model's neutral parameters and the same camera on the +z axis looking
at the origin. With ``crop: face`` the crop is centred on the largest face that scikit-image's
bundled LBP frontal-face cascade finds (offline, about 0.3 s on a 512x512 image), sized so the
head fills the frame as the camera expects. Good enough for the reference pipeline and for
tests; a real tracker fits both parameters and camera.
"""

from __future__ import annotations

import functools
import warnings
from typing import Literal

from pydantic import Field
from torch import Tensor, nn

from gshead.core.components import BuildContext, HeadModel, TrackerConfig
from gshead.core.errors import InputError, ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, CropBox, Tracked

MIN_FACE_PIXELS = 40
"""Smallest face side ``detect_faces`` looks for by default, in pixels (the default of
``TrackerConfig.min_face_pixels``, which the tracker passes)."""


class FrontalTrackerConfig(TrackerConfig):
    """Neutral head parameters and a fixed frontal camera for every image (centred portraits).

    With ``crop: face`` the crop is placed by the shared tracker fields ``face_scale`` and
    ``face_offset``; ``min_face_pixels`` is the smallest face the cascade looks for."""

    name: Literal["frontal"] = "frontal"
    distance: float = Field(1.0, gt=0.0)
    """Distance from the camera to the head's centre (the world origin), in head-model units (metres)."""
    fov_degrees: float = Field(18.0, gt=0.0, lt=180.0)
    """Horizontal field of view of the camera, in degrees."""
    crop: Literal["center", "face"] = "center"
    """How to crop a raw image: 'center' (already a centred portrait) or 'face' (centre on the
    largest detected face; an image with no face is an error)."""


@functools.cache
def _cascade():
    from skimage.data import lbp_frontal_face_cascade_filename
    from skimage.feature import Cascade

    return Cascade(lbp_frontal_face_cascade_filename())


def detect_faces(image: Tensor, min_face_pixels: int = MIN_FACE_PIXELS) -> list[tuple[float, float, float]]:
    """Face boxes (left, top, side) in pixels of ``image`` [1, 3, H, W], largest first; faces
    narrower than ``min_face_pixels`` are not looked for."""
    h, w = image.shape[-2:]
    rgb = (image[0].permute(1, 2, 0).clamp(0, 1) * 255).to("cpu").byte().numpy()
    smallest = (min_face_pixels, min_face_pixels)
    found = _cascade().detect_multi_scale(
        img=rgb, scale_factor=1.2, step_ratio=1, min_size=smallest, max_size=(h, w)
    )
    boxes = [(float(d["c"]), float(d["r"]), float(d["width"])) for d in found]
    return sorted(boxes, key=lambda b: -b[2])


class FrontalTracker(nn.Module):
    """Images [B, 3, H, W] -> neutral HeadParams [B] and a frontal Camera [B] of size W x H."""

    def __init__(self, config: FrontalTrackerConfig, context: BuildContext) -> None:
        super().__init__()
        if context.head_model is None:
            raise ShapeError("frontal: BuildContext.head_model is None; expected the pipeline's head model")
        self.config = config
        # A bound method, not the model itself: the head model may be an nn.Module, and storing it
        # would register it as a submodule (its weights duplicated in this tracker's state dict).
        head: HeadModel = context.head_model
        self._neutral = head.neutral

    def crop_box(self, image: Tensor) -> CropBox | None:
        """None for crop 'center'; for crop 'face', a square around the largest face."""
        if self.config.crop == "center":
            return None
        faces = detect_faces(image, self.config.min_face_pixels)
        if not faces:
            raise InputError(
                f"frontal: no face found in the image (expected a frontal face at least "
                f"{self.config.min_face_pixels} px wide); for an already centred portrait use 'crop: center'"
            )
        left, top, side = faces[0]
        others = [f for f in faces[1:] if f[2] >= 0.7 * side and not _overlaps(f, faces[0])]
        if others:
            warnings.warn(f"frontal: {len(others) + 1} faces found; using the largest", stacklevel=2)
        cx, cy = left + side / 2, top + side / 2 + self.config.face_offset * side
        crop = self.config.face_scale * side
        return CropBox(cx - crop / 2, cy - crop / 2, crop)

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


def _overlaps(a: tuple[float, float, float], b: tuple[float, float, float]) -> bool:
    return abs(a[0] - b[0]) < max(a[2], b[2]) and abs(a[1] - b[1]) < max(a[2], b[2])


@hookimpl
def gshead_register_trackers(register) -> None:
    register.add(FrontalTrackerConfig, FrontalTracker)
