"""gshead.jobs.tracking: smoothing, interpolation of face-less frames, per-frame crops, the cache,
sequence files v1/v2, and the ``file`` tracker.

Most tests drive ``track_video`` with a scripted fake tracker (faces and fitted values chosen by
the test), so they check the sequence logic exactly and fast; the MediaPipe tests at the end use
the real tracker on scikit-image's astronaut and skip when ``mediapipe`` cannot be imported.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pytest
import torch

from gshead.core.components import BuildContext, Configured, FaceDetector, LandmarkTracker, TrackerConfig
from gshead.core.errors import ConfigError, InputError
from gshead.io.media import VideoWriter, read_image
from gshead.io.sequence import TrackedSequence, load_sequence, save_sequence
from gshead.jobs.tracking import (
    OneEuroFilter,
    cache_dir,
    interpolate_missing,
    nearest_valid,
    smooth_sequence,
    track_file,
    track_image,
    track_video,
)
from gshead.core.types import Camera, CropBox, HeadParams, Tracked

N_ID, N_EXPR = 3, 4  # identity and expression sizes of the fake head


# ------------------------------------------------------------------------------- fake tracker
class _Config(TrackerConfig):
    """The fake's face-crop settings: the shared ``TrackerConfig`` fields."""

    name: Literal["fake"] = "fake"


class FakeFaceDetector:
    """Faces are read from the frame: pixel (0, 0) of channel 0 > 0.5 means a face of side
    ``10 * pixel (0, 1) of channel 0 * 10`` at (left, top) = 100 * pixels (0, 2), (0, 3); channel 1
    pixel (0, 0) * 10 is the number of faces. Fitting returns, for the k-th crop fitted, jaw[0] =
    expression[0] = values[k] and identity = idents[batch number]; crops whose mean is exactly 0
    are "no landmarks" (NaN error, or InputError for the whole batch with ``refuse``).

    A ``FaceDetector`` whose fit errors stay inside (``track`` only); ``FakeTracker`` also
    reports them. ``crop`` overrides the shared face-crop fields of its config."""

    def __init__(self, values=None, idents=None, refuse=False, **crop):
        self.config = _Config(**{"min_face_pixels": 10, "face_scale": 2.0, **crop})
        self.values = list(values) if values is not None else None
        self.idents = idents
        self.refuse = refuse
        self.calls = 0
        self.fitted = 0
        self.batches = 0

    def detect_faces(self, image):
        p = image[0, 0, 0]
        if float(p[0]) <= 0.5:
            return []
        side = float(p[1]) * 100
        box = (float(p[2]) * 100, float(p[3]) * 100, side)
        count = max(1, round(float(image[0, 1, 0, 0]) * 10))
        return [box] + [(0.0, 0.0, side / 2)] * (count - 1)

    def _fit(self, crops):
        self.calls += 1
        b, _, h, w = crops.shape
        empty = crops.flatten(1).abs().sum(1) == 0
        if self.refuse and empty.any():
            raise InputError("fake: no landmarks in one crop")
        params = HeadParams.zeros(N_ID, N_EXPR, b)
        for i in range(b):
            v = self.values[self.fitted] if self.values is not None else 0.0
            self.fitted += 1
            params.jaw[i, 0] = v
            params.expression[i, 0] = v
            params.rotation[i, 1] = v
        if self.idents is not None:
            params.identity[:] = self.idents[self.batches]
        self.batches += 1
        error = torch.where(empty, float("nan"), 1.5)
        return Tracked(params, Camera.frontal(1.0, 18.0, w, h, b)), error

    def track(self, crops):
        return self._fit(crops)[0]


class FakeTracker(FakeFaceDetector):
    """``FakeFaceDetector`` that reports its fit errors: a ``LandmarkTracker`` too."""

    def track_with_error(self, crops):
        return self._fit(crops)


def _frame(face=True, side=0.3, left=0.2, top=0.1, faces=1, size=64, fill=0.5):
    f = torch.full((1, 3, size, size), fill)
    f[0, 0, 0, :4] = torch.tensor([0.9 if face else 0.0, side, left, top])
    f[0, 1, 0, 0] = faces / 10
    return f


# ------------------------------------------------------------------------------- maths
def test_smoothing_reduces_jitter_and_keeps_constants():
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 2 * math.pi, 120)
    truth = torch.stack([torch.sin(t), 0.5 * torch.cos(2 * t)], 1)  # [120, 2]
    noisy = truth + 0.1 * torch.randn(120, 2, generator=g)
    smooth = smooth_sequence(noisy, 2.0)
    raw_err = (noisy - truth).square().mean().sqrt()
    new_err = (smooth - truth).square().mean().sqrt()
    assert new_err < 0.5 * raw_err  # measured ~0.4 of the raw error
    jitter = lambda x: (x[1:] - x[:-1]).abs().mean()  # noqa: E731
    assert jitter(smooth) < 0.3 * jitter(noisy)
    constant = torch.full((30, 3, 2), 0.37)
    assert torch.allclose(smooth_sequence(constant, 3.0), constant, atol=1e-7)
    assert torch.equal(smooth_sequence(noisy, 0.0), noisy)
    # A linear ramp stays on the ramp away from the ends (a symmetric window is exact for lines).
    ramp = torch.arange(40.0)[:, None]
    assert torch.allclose(smooth_sequence(ramp, 2.0)[8:-8], ramp[8:-8], atol=1e-4)
    with pytest.raises(InputError, match="smoothing"):
        smooth_sequence(noisy, -1.0)


def test_interpolation_matches_linear_interpolation_and_holds_the_ends():
    g = torch.Generator().manual_seed(1)
    values = torch.randn(12, 3, generator=g)
    valid = torch.tensor([0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0, 0], dtype=torch.bool)
    out = interpolate_missing(values, valid)
    frames = np.arange(12)
    for d in range(3):  # np.interp holds the end values, as the tracker should
        want = np.interp(frames, frames[valid.numpy()], values[valid, d].numpy())
        np.testing.assert_allclose(out[:, d].numpy(), want, rtol=0, atol=1e-6)
    assert torch.equal(out[valid], values[valid])
    assert nearest_valid(valid).tolist() == [1, 1, 2, 2, 2, 6, 6, 6, 8, 9, 9, 9]
    with pytest.raises(InputError):
        interpolate_missing(values, torch.zeros(12, dtype=torch.bool))


def test_one_euro_filter_steadies_a_still_box_and_follows_a_moving_one():
    g = torch.Generator().manual_seed(2)
    f = OneEuroFilter(25.0, 1.0, 4.0)
    still = torch.tensor([100.0, 100.0, 80.0]) + torch.randn(50, 3, generator=g)
    out = torch.stack([f(x) for x in still])
    assert (out[10:, 0] - 100).abs().mean() < 0.5 * (still[10:, 0] - 100).abs().mean()
    f = OneEuroFilter(25.0, 1.0, 4.0)
    moving = torch.stack([torch.tensor([100.0 + 4 * i, 100.0, 80.0]) for i in range(50)])
    out = torch.stack([f(x) for x in moving])
    assert (out[-1, 0] - moving[-1, 0]).abs() < 8  # lag under two frames of motion


# ------------------------------------------------------------------------------- track_video
def test_faceless_frames_are_flagged_and_interpolated():
    faces = [False, True, True, False, False, True, True, False]
    values = [0.1, 0.2, 0.8, 0.4]  # fitted values of the face frames 1, 2, 5, 6
    tracker = FakeTracker(values)
    frames = [_frame(face=f) for f in faces]
    with pytest.warns(UserWarning, match=r"no face in 4 of 8 frames \(0, 3, 4, 7\)"):
        seq = track_video(tracker, frames, head_model="fake", crop_size=32, smoothing=0.0, batch_size=3)
    assert seq.valid.tolist() == faces
    want = np.interp(np.arange(8), [1, 2, 5, 6], values)
    np.testing.assert_allclose(seq.params.jaw[:, 0].numpy(), want, atol=1e-6)
    np.testing.assert_allclose(seq.params.expression[:, 0].numpy(), want, atol=1e-6)
    assert torch.isnan(seq.fit_error[~seq.valid]).all() and (seq.fit_error[seq.valid] == 1.5).all()
    assert (seq.camera.width, seq.camera.height) == (32, 32) and len(seq) == 8
    # Crop: 2 x the face box (side 30 at (20, 10)), its centre 3 px (a tenth of the side) higher.
    assert torch.allclose(seq.crop[1], torch.tensor([5.0, -8.0, 60.0]), atol=1e-4)
    assert torch.allclose(seq.crop[3], seq.crop[2])  # held over the face-less frames
    assert torch.allclose(seq.crop[0], torch.tensor([0.0, 0.0, 64.0]))  # before any face: centred
    assert tracker.fitted == 4  # face-less frames are never fitted


def test_no_face_in_any_frame_is_an_error():
    with pytest.raises(InputError, match=r"clip: no face found in any of its 5 frames \(no face found"):
        track_video(FakeTracker([]), [_frame(face=False)] * 5, head_model="fake", crop_size=32, source="clip")
    with pytest.raises(InputError, match="has no frames"):
        track_video(FakeTracker([]), [], head_model="fake", crop_size=32)


def test_identity_is_shared_over_the_sequence():
    idents = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    tracker = FakeTracker([0.0] * 4, idents=idents)
    seq = track_video(tracker, [_frame()] * 4, head_model="fake", crop_size=32, batch_size=2)
    assert tracker.batches == 2
    assert torch.allclose(seq.params.identity, torch.tensor([0.5, 0.5, 0.0]).expand(4, 3))


def test_a_refused_batch_only_loses_the_refused_crop():
    tracker = FakeTracker([0.3] * 10, refuse=True)
    frames = [_frame(), _frame(fill=0.0), _frame()]
    frames[1][0, 0, 0, :4] = torch.tensor([0.9, 0.3, 0.2, 0.1])  # a face box, but an empty crop
    with pytest.warns(UserWarning, match="no face in 1 of 3"):
        seq = track_video(tracker, frames, head_model="fake", crop_size=16, smoothing=0.0)
    assert seq.valid.tolist() == [True, False, True]
    assert torch.allclose(seq.params.jaw[:, 0], torch.full((3,), 0.3))


def test_several_faces_warn_with_the_count_and_small_faces_are_refused():
    with pytest.warns(UserWarning, match="up to 3 faces found"):
        track_video(FakeTracker([0.0] * 2), [_frame(faces=3), _frame()], head_model="f", crop_size=16)
    with pytest.warns(UserWarning, match="img: 2 faces found; using the largest"):
        track_image(FakeTracker([0.0]), _frame(faces=2), head_model="f", crop_size=16, source="img")
    with pytest.raises(
        InputError, match=r"img: the largest face is 5 px wide, smaller than the minimum 10 px"
    ):
        track_image(FakeTracker([0.0]), _frame(side=0.05), head_model="f", crop_size=16, source="img")
    with pytest.raises(
        InputError, match=r"img: no face found in the 64x64 image \(expected a face at least 10 px"
    ):
        track_image(FakeTracker([0.0]), _frame(face=False), head_model="f", crop_size=16, source="img")


def test_box_smoothing_reduces_box_jitter_and_zero_turns_it_off():
    g = torch.Generator().manual_seed(3)
    lefts = 0.2 + 0.03 * torch.rand(30, generator=g)
    frames = [_frame(left=float(x)) for x in lefts]
    raw = track_video(FakeTracker([0.0] * 30), frames, head_model="f", crop_size=16, smoothing=0.0)
    smooth = track_video(FakeTracker([0.0] * 30), frames, head_model="f", crop_size=16, smoothing=2.0)
    assert torch.allclose(raw.crop[:, 0], lefts * 100 - 15, atol=1e-3)  # exact detector boxes (2x, centred)
    jitter = lambda c: (c[1:, 0] - c[:-1, 0]).abs().mean()  # noqa: E731
    assert jitter(smooth.crop) < 0.5 * jitter(raw.crop)


def test_parameters_are_smoothed_over_time():
    g = torch.Generator().manual_seed(4)
    values = (0.3 + 0.05 * torch.randn(40, generator=g)).tolist()
    raw = track_video(FakeTracker(values), [_frame()] * 40, head_model="f", crop_size=16, smoothing=0.0)
    smooth = track_video(FakeTracker(values), [_frame()] * 40, head_model="f", crop_size=16, smoothing=2.0)
    assert torch.allclose(raw.params.jaw[:, 0], torch.tensor(values), atol=1e-6)
    assert smooth.params.jaw[:, 0].std() < 0.5 * raw.params.jaw[:, 0].std()
    assert torch.allclose(smooth.params.rotation[:, 1], smooth.params.jaw[:, 0])  # pose too


def test_a_tracker_without_fit_errors_gets_nan_errors():
    tracker = FakeFaceDetector([0.2, 0.2])
    assert isinstance(tracker, FaceDetector) and not isinstance(tracker, LandmarkTracker)
    seq = track_video(tracker, [_frame()] * 2, head_model="f", crop_size=16)
    assert seq.valid.all() and torch.isnan(seq.fit_error).all()


class MinimalTracker:
    """Only the ``Tracker`` protocol: no face detector, no fit errors, no config. ``crop_box``
    reads the same face marker as ``FakeTracker`` (no face: ``InputError``) and returns a fixed
    box; every crop is "fitted" with jaw[0] = 0.5."""

    def __init__(self):
        self.asked = 0

    def crop_box(self, image):
        self.asked += 1
        if float(image[0, 0, 0, 0]) <= 0.5:
            raise InputError("minimal: no face here")
        return CropBox(4.0, 6.0, 30.0)

    def track(self, crops):
        b, _, h, w = crops.shape
        params = HeadParams.zeros(N_ID, N_EXPR, b)
        params.jaw[:, 0] = 0.5
        return Tracked(params, Camera.frontal(1.0, 18.0, w, h, b))


def test_a_tracker_without_the_optional_abilities_crops_with_crop_box():
    tracker = MinimalTracker()
    assert not isinstance(tracker, (FaceDetector, LandmarkTracker, Configured))
    frames = [_frame(), _frame(face=False), _frame()]
    with pytest.warns(UserWarning, match=r"no face in 1 of 3 frames \(1\)"):
        seq = track_video(tracker, frames, head_model="f", crop_size=16, smoothing=0)
    assert tracker.asked == 3  # asked for a box in every frame (the face-less one raised)
    assert seq.valid.tolist() == [True, False, True]
    assert torch.equal(seq.crop[0], torch.tensor([4.0, 6.0, 30.0]))  # its own box, not a face box
    assert torch.isnan(seq.fit_error).all()  # no fit errors without ``track_with_error``
    assert torch.allclose(seq.params.jaw[:, 0], torch.full((3,), 0.5))
    assert seq.tracker == ""  # no validated config to record
    one = track_image(tracker, _frame(), head_model="f", crop_size=16)
    assert one.valid.all() and torch.isnan(one.fit_error).all()
    with pytest.raises(InputError, match="minimal: no face here"):
        track_image(tracker, _frame(face=False), head_model="f", crop_size=16)


def test_a_face_detector_is_cropped_with_its_configs_shared_crop_fields():
    frame = _frame(side=0.3, left=0.2, top=0.1)  # face box (20, 10) side 30
    tracker = FakeTracker([0.1], face_scale=3.0, face_offset=0.25)
    assert isinstance(tracker, (FaceDetector, LandmarkTracker, Configured))
    seq = track_image(tracker, frame, head_model="f", crop_size=16)
    cx, cy, side = 20 + 15, 10 + 15 + 0.25 * 30, 3.0 * 30
    assert torch.allclose(seq.crop[0], torch.tensor([cx - side / 2, cy - side / 2, side]))
    assert seq.tracker == tracker.config.model_dump_json() and '"face_offset":0.25' in seq.tracker
    # The default offset is the trackers' own: the crop's centre a tenth of the face box above its centre.
    default = track_image(FakeTracker([0.1]), frame, head_model="f", crop_size=16)
    assert torch.allclose(default.crop[0], torch.tensor([35 - 30.0, 22 - 30.0, 60.0]))
    # ``min_face_pixels`` is read from the config: the same 30 px face is refused with 31.
    with pytest.raises(InputError, match="30 px wide, smaller than the minimum 31 px"):
        track_image(FakeTracker([0.1], min_face_pixels=31), frame, head_model="f", crop_size=16)


# ------------------------------------------------------------------------------- files and cache
@pytest.fixture
def own_cache(tmp_path_factory, monkeypatch):
    """A fresh tracking cache for one test."""
    monkeypatch.setenv("GSHEAD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


def _png(path, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
    # A "face" marker the fake tracker reads (pixel (0, 0..3) of the red channel).
    image = np.asarray(Image.open(path)).copy()
    image[0, :4, 0] = [230, 77, 51, 26]
    image[0, 0, 1] = 25  # one face
    Image.fromarray(image).save(path)


def test_cache_hit_skips_the_tracker_and_content_change_misses(tmp_path, own_cache):
    image = tmp_path / "face.png"
    _png(image)
    built = []

    def build():
        built.append(FakeTracker([0.25] * 4))
        return built[-1]

    kwargs = dict(head_model="f", crop_size=16, tracker_config='{"name": "fake"}')
    first, cached = track_file(image, build, **kwargs)
    assert not cached and len(built) == 1 and built[0].calls == 1
    again, cached = track_file(image, build, **kwargs)
    assert cached and len(built) == 1  # the tracker was not even built
    for key, value in first.tensors().items():
        assert torch.equal(again.tensors()[key], value), key
    assert again.source_sha256 == first.source_sha256 and len(first.source_sha256) == 64
    files = list(cache_dir().iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"  # no temporary files left
    # A damaged cache entry is a miss (tracked again and rewritten), not an error.
    files[0].write_bytes(files[0].read_bytes()[:100])
    assert track_file(image, build, **kwargs)[1] is False and len(built) == 2
    assert track_file(image, build, **kwargs)[1] is True and len(built) == 2
    # Another tracker config, or --no-cache: tracked again.
    track_file(image, build, **{**kwargs, "tracker_config": '{"name": "fake", "x": 1}'})
    track_file(image, build, **kwargs, use_cache=False)
    assert len(built) == 4
    # Same name, new content: a miss.
    _png(image, seed=1)
    changed, cached = track_file(image, build, **kwargs)
    assert not cached and len(built) == 5 and changed.source_sha256 != first.source_sha256


def test_truncated_video_writes_no_sequence(tmp_path, own_cache):
    rng = torch.Generator().manual_seed(0)
    with VideoWriter(tmp_path / "noise.mp4", 25, 64, 48) as writer:
        writer.write(torch.rand(20, 3, 48, 64, generator=rng))
    data = (tmp_path / "noise.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    tracker = FakeFaceDetector()
    tracker.detect_faces = lambda image: [(10.0, 10.0, 20.0)]
    with pytest.raises(InputError, match="cut.mp4.*truncated"):
        track_file(tmp_path / "cut.mp4", lambda: tracker, head_model="f", crop_size=16, tracker_config="{}")
    assert not cache_dir().exists() or list(cache_dir().iterdir()) == []


def test_sequence_v2_round_trip_and_v1_still_loads(tmp_path):
    t = 3
    params = HeadParams.zeros(N_ID, N_EXPR, t)
    seq = TrackedSequence(
        params, Camera.frontal(1.0, 18.0, 32, 32, t), torch.tensor([True, False, True]), 25.0, "fake",
        crop=torch.arange(9.0).view(3, 3), fit_error=torch.tensor([1.0, float("nan"), 2.0]),
        source_sha256="ab" * 32, tracker='{"name": "fake"}',
    )  # fmt: skip
    save_sequence(tmp_path / "v2.safetensors", seq)
    back = load_sequence(tmp_path / "v2.safetensors")
    assert torch.equal(back.crop, seq.crop) and torch.equal(back.fit_error.isnan(), seq.fit_error.isnan())
    assert back.source_sha256 == "ab" * 32 and back.tracker == '{"name": "fake"}'
    # A version 1 file, as written before crop boxes and fit errors existed.
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in params.tensors("params.").items()}
    tensors["camera.world_to_camera"] = seq.camera.world_to_camera.contiguous()
    tensors["camera.intrinsics"] = seq.camera.intrinsics.contiguous()
    tensors["valid"] = torch.ones(t, dtype=torch.uint8)
    meta = {"format": "gshead.sequence", "format_version": "1", "fps": "30.0", "head_model": "fake",
            "camera_size": "32x32"}  # fmt: skip
    save_file(tensors, str(tmp_path / "v1.safetensors"), metadata=meta)
    old = load_sequence(tmp_path / "v1.safetensors")
    assert len(old) == 3 and old.fps == 30.0 and old.valid.all()
    assert old.crop.shape == (3, 3) and torch.isnan(old.crop).all() and torch.isnan(old.fit_error).all()
    assert old.source_sha256 == "" and old.tracker == ""
    save_file(tensors, str(tmp_path / "v9.safetensors"), metadata={**meta, "format_version": "9"})
    with pytest.raises(InputError, match="expected 'gshead.sequence' v1 or v2"):
        load_sequence(tmp_path / "v9.safetensors")


# ------------------------------------------------------------------------------- file tracker
def test_file_tracker_replays_frames_in_order_or_one_frame(tmp_path):
    from gshead.plugins.headmodels.procedural import ProceduralHeadConfig, ProceduralHeadModel
    from gshead.plugins.trackers.file import SequenceFileTracker, SequenceFileTrackerConfig

    head = ProceduralHeadModel(ProceduralHeadConfig(subdivisions=4))
    params = head.neutral(5)
    params = params.replace(jaw=torch.arange(15.0).view(5, 3))
    seq = TrackedSequence(params, Camera.frontal(1.0, 18.0, 32, 32, 5), torch.ones(5, dtype=torch.bool), 25.0,
                          "procedural")  # fmt: skip
    save_sequence(tmp_path / "s.safetensors", seq)
    ctx = BuildContext(8, head)
    tracker = SequenceFileTracker(SequenceFileTrackerConfig(path=str(tmp_path / "s.safetensors")), ctx)
    images = torch.zeros(3, 3, 64, 64)
    first, second = tracker.track(images), tracker.track(images)
    assert first.params.jaw[:, 0].tolist() == [0.0, 3.0, 6.0]
    assert second.params.jaw[:, 0].tolist() == [9.0, 12.0, 0.0]  # wraps round
    assert (first.camera.width, first.camera.height) == (64, 64)
    assert torch.allclose(first.camera.intrinsics[0, 0, 2], torch.tensor(32.0))  # rescaled from 32 px
    fixed = SequenceFileTracker(
        SequenceFileTrackerConfig(path=str(tmp_path / "s.safetensors"), frame=-1), ctx
    )
    assert fixed.track(images).params.jaw[:, 0].tolist() == [12.0] * 3
    assert fixed.crop_box(images[:1]) is None
    with pytest.raises(ConfigError, match="frame 7 is outside the 5 frames"):
        SequenceFileTracker(SequenceFileTrackerConfig(path=str(tmp_path / "s.safetensors"), frame=7), ctx)

    class OtherHead:
        identity_dim, expression_names = 2, ("a",)

    with pytest.raises(ConfigError, match="tracked with head model 'procedural'"):
        SequenceFileTracker(
            SequenceFileTrackerConfig(path=str(tmp_path / "s.safetensors")), BuildContext(8, OtherHead())
        )
    with pytest.raises(InputError, match="no such tracked-sequence file"):
        SequenceFileTracker(SequenceFileTrackerConfig(path=str(tmp_path / "none.safetensors")), ctx)


# ------------------------------------------------------------------------------- MediaPipe
try:
    import mediapipe  # noqa: F401

    _MISSING = None
except Exception as exc:  # noqa: BLE001 - ImportError, or a broken dependency (cv2, protobuf)
    _MISSING = f"mediapipe is not importable ({type(exc).__name__}: {exc})"

needs_mediapipe = pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")


@pytest.fixture(scope="module")
def mp_tracker():
    from gshead.plugins.headmodels.procedural import ProceduralHeadModel
    from gshead.plugins.trackers.mediapipe import MediapipeTracker, MediapipeTrackerConfig

    return MediapipeTracker(MediapipeTrackerConfig(), BuildContext(8, ProceduralHeadModel()))


@pytest.mark.slow
@needs_mediapipe
def test_mediapipe_image_faces_several_faces_and_small_faces(mp_tracker):
    import torch.nn.functional as F

    astronaut = read_image("example:astronaut")  # [1, 3, 512, 512]
    seq = track_image(mp_tracker, astronaut, head_model="procedural", crop_size=256)
    # 256 px crops: the same 2%-of-the-crop bound as the tracker's own astronaut test (5 px).
    assert seq.valid.all() and float(seq.fit_error[0]) < 0.02 * 256
    # Two astronauts side by side, the right one at 3/4 size (at half size the detector misses it):
    # the larger one is tracked, with a warning naming the count.
    small = F.interpolate(astronaut, size=(384, 384), mode="area")
    pair = torch.zeros(1, 3, 512, 768)
    pair[..., :512] = astronaut
    pair[..., 128:, 384:] = small  # covers none of the large face (x 173..281, y 68..176)
    with pytest.warns(UserWarning, match="2 faces found; using the largest"):
        two = track_image(mp_tracker, pair, head_model="procedural", crop_size=128)
    assert float(two.crop[0, 0] + two.crop[0, 2] / 2) < 300  # the crop is centred on the large face
    # No face: flat colour and noise.
    with pytest.raises(InputError, match="no face found .* at least 40 px"):
        track_image(mp_tracker, torch.full((1, 3, 128, 128), 0.4), head_model="procedural", crop_size=64)
    # A face too small to track: the astronaut at 64 px (the detector finds a 13 px face).
    tiny = F.interpolate(astronaut, size=(64, 64), mode="area")
    with pytest.raises(InputError, match=r"largest face is \d+ px wide, smaller than the minimum 40 px"):
        track_image(mp_tracker, tiny, head_model="procedural", crop_size=64)


@pytest.mark.slow
@needs_mediapipe
def test_mediapipe_video_flags_the_faceless_frame(mp_tracker):
    import torch.nn.functional as F

    astronaut = F.interpolate(read_image("example:astronaut"), size=(256, 256), mode="area")
    frames = [astronaut, torch.roll(astronaut, 5, dims=3), torch.full_like(astronaut, 0.3), astronaut]
    with pytest.warns(UserWarning, match=r"no face in 1 of 4 frames \(2\)"):
        seq = track_video(mp_tracker, frames, head_model="procedural", crop_size=128, fps=25.0)
    assert seq.valid.tolist() == [True, True, False, True]
    # Fit errors: finite where a face was fitted, below 2% of the 128 px crop (the tracker's own
    # astronaut bound); NaN for the flagged frame.
    assert (seq.fit_error[seq.valid] < 0.02 * 128).all() and torch.isnan(seq.fit_error[2])
    assert torch.isfinite(seq.params.rotation).all() and (seq.params.identity == seq.params.identity[0]).all()
