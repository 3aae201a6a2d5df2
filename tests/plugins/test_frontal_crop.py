"""The frontal tracker's face crop and the padded square crop it feeds."""

from __future__ import annotations

import pytest
import torch

from gshead.core.components import BuildContext
from gshead.core.errors import InputError
from gshead.core.io import crop_square, read_image
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
    with pytest.raises(InputError, match="no face found in the image .*crop: center"):
        _tracker(crop="face").crop_box(torch.zeros(1, 3, 128, 128))


def test_crop_square_pads_with_black_past_the_borders():
    image = torch.ones(1, 3, 10, 10)
    out = crop_square(image, CropBox(-5, 0, 10), 10)
    assert out.shape == (1, 3, 10, 10)
    assert torch.all(out[..., :5] == 0) and torch.all(out[..., 5:] == 1)
    inside = crop_square(torch.arange(100.0).view(1, 1, 10, 10), CropBox(2, 3, 4), 4)
    assert torch.equal(inside[0, 0], torch.arange(100.0).view(10, 10)[3:7, 2:6])
