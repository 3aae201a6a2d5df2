"""``frontal``: assumes a frontal portrait; no fitting at all.

Every crop gets the head model's neutral parameters and the same camera on the +z axis looking
at the origin. With ``crop: face`` the crop is centred on the largest face that scikit-image's
bundled LBP frontal-face cascade finds (offline, about 0.3 s on a 512x512 image), sized so the
head fills the frame as the camera expects. Good enough for the reference pipeline and for
tests; a real tracker fits both parameters and camera.
"""

from __future__ import annotations

import functools
import math
import warnings
from typing import ClassVar, Literal

import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from gshead.core.components import BuildContext, HeadModel, TrackerConfig
from gshead.core.errors import InputError, ShapeError
from gshead.core.hookspecs import hookimpl
from gshead.core.types import Camera, CropBox, Tracked

MIN_FACE_PIXELS = 40
"""Smallest face side ``detect_faces`` looks for by default, in pixels (the default of
``TrackerConfig.min_face_pixels``, which the tracker passes)."""
SEARCH_SIDE = 2048
"""An image whose longer side exceeds this (pixels) is searched on a copy downscaled to this
longer side (the cascade's time grows with the pixels searched); a face found small there is
then located again in a crop of the full-resolution image (``REFINE_SIDE``)."""
CASCADE_WINDOW = 24
"""Side of the cascade's detection window (pixels): the smallest face it finds in what it searches."""


class FrontalTrackerConfig(TrackerConfig):
    """Neutral head parameters and a fixed frontal camera for every image (centred portraits).

    With ``crop: face`` the crop is placed by the shared tracker fields ``face_scale`` and
    ``face_offset``; ``min_face_pixels`` is the smallest face the cascade looks for."""

    name: Literal["frontal"] = "frontal"
    fits_motion: ClassVar[bool] = False  # every image gets the neutral face
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


def search_size(height: int, width: int, min_face_pixels: int = MIN_FACE_PIXELS) -> tuple[int, int, int]:
    """(height, width) at which ``detect_faces`` searches a ``height`` x ``width`` image, and the
    smallest face side (pixels of the image) it can find there: ``min_face_pixels``, or more when
    the image is larger than ``SEARCH_SIDE`` (the cascade's window on the downscaled copy)."""
    scale = min(1.0, SEARCH_SIDE / max(height, width))
    if scale == 1.0:
        return height, width, int(min_face_pixels)
    sh, sw = max(1, round(height * scale)), max(1, round(width * scale))
    return sh, sw, max(int(min_face_pixels), math.ceil(CASCADE_WINDOW * max(height / sh, width / sw)))


def _cascade_boxes(image: Tensor, min_side: int) -> list[tuple[float, float, float]]:
    """The cascade's face boxes (left, top, side) in ``image`` [1, 3, H, W], sides >= ``min_side``."""
    h, w = image.shape[-2:]
    min_side = max(int(min_side), CASCADE_WINDOW)
    if min(h, w) < min_side:
        return []
    rgb = (image[0].permute(1, 2, 0).clamp(0, 1) * 255).to("cpu").byte().numpy()
    found = _cascade().detect_multi_scale(
        img=rgb, scale_factor=1.2, step_ratio=1, min_size=(min_side, min_side), max_size=(h, w)
    )
    return [(float(d["c"]), float(d["r"]), float(d["width"])) for d in found]


def _resized(image: Tensor, scale: float) -> Tensor:
    """``image`` [1, 3, H, W] scaled by ``scale`` <= 1 (area averaging, so small faces keep their shape)."""
    if scale >= 1.0:
        return image
    h, w = image.shape[-2:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return F.interpolate(image.float(), size=size, mode="area")


def _refine(image: Tensor, box: tuple[float, float, float]) -> tuple[float, float, float]:
    """``box`` (found on a downscaled copy) located again in a crop of the full-resolution
    ``image`` around it, at a scale where the face is ``REFINE_SIDE`` px; ``box`` when not found there."""
    h, w = image.shape[-2:]
    left, top, side = box
    x0, y0 = max(0, math.floor(left - side / 2)), max(0, math.floor(top - side / 2))
    x1, y1 = min(w, math.ceil(left + 1.5 * side)), min(h, math.ceil(top + 1.5 * side))
    scale = min(1.0, REFINE_SIDE / max(side, 1.0))
    crop = _resized(image[..., y0:y1, x0:x1], scale)
    sy, sx = crop.shape[-2] / max(1, y1 - y0), crop.shape[-1] / max(1, x1 - x0)
    found = [
        (x0 + c / sx, y0 + r / sy, s / sx)
        for c, r, s in _cascade_boxes(crop, math.floor(0.7 * side * sx))
        if s / sx <= 1.4 * side
    ]
    if not found:
        return box
    cx, cy = left + side / 2, top + side / 2
    return min(found, key=lambda b: abs(b[0] + b[2] / 2 - cx) + abs(b[1] + b[2] / 2 - cy))


REFINED_FACES = 4
"""How many of the largest faces found small on a downscaled copy are located again at full resolution."""
REFINE_SIDE = 128
"""Faces narrower than this on the downscaled copy (pixels) are located again in a crop where they
are this wide (or at full resolution)."""


def detect_faces(image: Tensor, min_face_pixels: int = MIN_FACE_PIXELS) -> list[tuple[float, float, float]]:
    """Face boxes (left, top, side) in pixels of ``image`` [1, 3, H, W], largest first; faces
    narrower than ``min_face_pixels`` are not looked for.

    An image larger than ``SEARCH_SIDE`` is searched on a downscaled copy (see ``search_size``
    for the smallest face found then), and faces small on that copy are located again in
    full-resolution crops around them."""
    h, w = image.shape[-2:]
    sh, sw, smallest = search_size(h, w, min_face_pixels)
    if (sh, sw) == (h, w):
        return sorted(_cascade_boxes(image, min_face_pixels), key=lambda b: -b[2])
    small = F.interpolate(image.float(), size=(sh, sw), mode="area")
    sy, sx = sh / h, sw / w
    found = _cascade_boxes(small, math.floor(smallest * min(sx, sy)))
    coarse = [(c / sx, r / sy, s / max(sx, sy)) for c, r, s in found]
    coarse.sort(key=lambda b: -b[2])
    # a face narrower than REFINE_SIDE on the copy is located again where it has REFINE_SIDE px
    small_on_copy = [i for i, b in enumerate(coarse) if b[2] * min(sx, sy) < REFINE_SIDE][:REFINED_FACES]
    boxes = [_refine(image, b) if i in small_on_copy else b for i, b in enumerate(coarse)]
    return sorted((b for b in boxes if b[2] >= min_face_pixels), key=lambda b: -b[2])


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
            h, w = image.shape[-2:]
            sh, sw, smallest = search_size(h, w, self.config.min_face_pixels)
            where = f"searched at {sw}x{sh}, " if (sh, sw) != (h, w) else "searched at full size, "
            raise InputError(
                f"frontal: no face found in the {w}x{h} image ({where}for a frontal face at least "
                f"{smallest} px wide); for an already centred portrait use 'crop: center'"
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
