"""The built-in trackers declare the optional abilities they have (``FaceDetector``,
``LandmarkTracker``, ``Configured``) and share the face-crop fields of ``TrackerConfig``.

Building the trackers needs no MediaPipe (it is imported on first use); the checks that run the
detector skip when ``mediapipe`` cannot be imported.
"""

from __future__ import annotations

import pytest

from gshead.core.components import (
    BuildContext,
    Configured,
    FaceDetector,
    LandmarkTracker,
    Tracker,
    TrackerConfig,
)
from gshead.core.errors import InputError
from gshead.core.registry import Registry
from gshead.io.media import read_image
from gshead.metrics.face import LandmarkDetector
from gshead.plugins.headmodels.procedural import ProceduralHeadConfig, ProceduralHeadModel

SHARED = ("face_scale", "face_offset", "min_face_pixels")
"""The face-crop fields every tracker config inherits from ``TrackerConfig``."""


@pytest.fixture(scope="module")
def context():
    return BuildContext(8, ProceduralHeadModel(ProceduralHeadConfig(subdivisions=4)))


def _build(name: str, context: BuildContext, **fields):
    spec = Registry(autoload=False).get("tracker", name)
    return spec.build(spec.config_class.model_validate({"name": name, **fields}), context)


def test_mediapipe_is_a_face_detector_and_a_landmark_tracker(context):
    tracker = _build("mediapipe", context)
    assert isinstance(tracker, Tracker) and isinstance(tracker, Configured)
    assert isinstance(tracker, FaceDetector) and isinstance(tracker, LandmarkTracker)
    assert isinstance(tracker, LandmarkDetector)  # what AKD needs (gshead.metrics.face)


@pytest.mark.parametrize("fields", [{"crop": "center"}, {"crop": "face"}])
def test_frontal_has_neither_ability(context, fields):
    tracker = _build("frontal", context, **fields)
    assert isinstance(tracker, Tracker) and isinstance(tracker, Configured)
    assert not isinstance(tracker, FaceDetector)  # it crops in its own crop_box (the cascade)
    assert not isinstance(tracker, LandmarkTracker) and not isinstance(tracker, LandmarkDetector)


def test_file_tracker_has_neither_ability(context):
    tracker = _build("file", context, path="demo", demo_frames=8)
    assert isinstance(tracker, Tracker) and isinstance(tracker, Configured)
    assert not isinstance(tracker, FaceDetector) and not isinstance(tracker, LandmarkTracker)


def test_every_tracker_config_has_the_shared_face_crop_fields():
    registry = Registry(autoload=False)
    specs = registry.components("tracker")
    assert {"frontal", "mediapipe", "file"} <= set(specs)
    base = TrackerConfig.model_fields
    for name, spec in specs.items():
        fields = spec.config_class.model_fields
        for field in SHARED:
            assert repr(fields[field]) == repr(base[field]), (name, field)  # inherited as declared
            assert base[field].description, field  # documented under the field
    # The defaults are the values the trackers used before the fields were shared.
    defaults = TrackerConfig(name="x")
    assert (defaults.face_scale, defaults.face_offset, defaults.min_face_pixels) == (2.2, -0.1, 40)


def test_frontal_cascade_uses_min_face_pixels(context):
    image = read_image("example:astronaut")  # her face is about 100 px wide
    assert _build("frontal", context, crop="face").crop_box(image) is not None
    with pytest.raises(InputError, match="at least 300 px wide"):
        _build("frontal", context, crop="face", min_face_pixels=300).crop_box(image)


try:
    import mediapipe  # noqa: F401

    _MISSING = None
except Exception as exc:  # noqa: BLE001 - ImportError, or a broken dependency (cv2, protobuf)
    _MISSING = f"mediapipe is not importable ({type(exc).__name__}: {exc})"


@pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")
def test_mediapipe_crop_follows_face_offset(context):
    image = read_image("example:astronaut")
    up = _build("mediapipe", context).crop_box(image)
    down = _build("mediapipe", context, face_offset=0.2).crop_box(image)
    side = up.side / 2.2  # the detected face box
    assert up.side == down.side and up.left == down.left
    assert abs((down.top - up.top) - 0.3 * side) < 1e-3
