"""The frontal tracker's face crop and the padded square crop it feeds."""

from __future__ import annotations

import pytest
import torch

from gshead.core.components import BuildContext
from gshead.core.errors import InputError
from gshead.io.media import crop_square, read_image
from gshead.core.types import CropBox, HeadParams
from gshead.plugins.trackers.frontal import FrontalTracker, FrontalTrackerConfig


class _Head:
    def neutral(self, b=1):
        return HeadParams.zeros(4, 3, b)


def _tracker(**fields):
    return FrontalTracker(FrontalTrackerConfig(**fields), BuildContext(8, _Head()))


def test_face_crop_centres_the_astronauts_face():
    image = read_image("example:astronaut")
    box = _tracker(crop="face").crop_box(image)
    # The astronaut's face spans roughly x 185..285, y 60..165 in the 512x512 image.
    cx, cy = box.left + box.side / 2, box.top + box.side / 2
    assert 210 < cx < 260 and 80 < cy < 130
    assert 150 < box.side < 300


def test_center_crop_defers_to_the_pipeline():
    assert _tracker().crop_box(torch.rand(1, 3, 64, 80)) is None


def test_no_face_is_a_clear_error():
    with pytest.raises(InputError, match="no face found in the 128x128 image .*crop: center"):
        _tracker(crop="face").crop_box(torch.zeros(1, 3, 128, 128))


def test_crop_square_pads_with_black_past_the_borders():
    image = torch.ones(1, 3, 10, 10)
    out = crop_square(image, CropBox(-5, 0, 10), 10)
    assert out.shape == (1, 3, 10, 10)
    assert torch.all(out[..., :5] == 0) and torch.all(out[..., 5:] == 1)
    inside = crop_square(torch.arange(100.0).view(1, 1, 10, 10), CropBox(2, 3, 4), 4)
    assert torch.equal(inside[0, 0], torch.arange(100.0).view(10, 10)[3:7, 2:6])


def test_face_offset_moves_the_crop_down_in_face_box_sides():
    image = read_image("example:astronaut")
    up, down = _tracker(crop="face").crop_box(image), _tracker(crop="face", face_offset=0.2).crop_box(image)
    side = up.side / 2.2  # the detected face box
    assert up.side == down.side and up.left == down.left
    assert abs((down.top - up.top) - 0.3 * side) < 1e-6


def test_default_pipeline_crop_puts_the_head_models_eyes_on_the_astronauts():
    """The embedded default's tracker (``mediapipe`` with ``face_offset: 0``; this file's tracker
    with ``face_offset: 0.12`` before it) crops so that anny-head's neutral eyes, projected with
    the frontal camera, land on the astronaut's eyes (about (203, 100) and (248, 100) in the 512²
    image), so the fit starts from a head in place."""
    pytest.importorskip("mediapipe", reason="the embedded default's tracker is mediapipe")
    from gshead.core.pipeline import Pipeline
    from gshead.core.types import Camera

    pipeline = Pipeline.default()
    box = pipeline.tracker.crop_box(read_image("example:astronaut"))
    model = pipeline.head_model
    landmarks = model(model.neutral(1)).landmarks[0]
    camera = Camera.frontal(1.0, 18.0, 512, 512, 1)  # the tracker's camera, at any pixel size
    w, k = camera.world_to_camera[0], camera.intrinsics[0]
    uvw = (landmarks @ w[:3, :3].T + w[:3, 3]) @ k.T
    crop_xy = uvw[:, :2] / uvw[:, 2:] / 512  # [L, 2] in crop units
    image_xy = torch.tensor([box.left, box.top]) + crop_xy * box.side
    for side, expected_x in (("right", 203.0), ("left", 248.0)):  # the subject's right is image left
        eye = (
            image_xy[model.landmark_index(f"eye_{side}_upper_lid")]
            + image_xy[model.landmark_index(f"eye_{side}_lower_lid")]
        ) / 2
        # x: anny's neutral eyes are 5.7 cm apart, a little closer than hers; y: the old centre
        # (face_offset -0.1) put them 23 px too high, on her brows
        assert abs(float(eye[0]) - expected_x) < 15 and abs(float(eye[1]) - 100.0) < 8, (side, eye)
