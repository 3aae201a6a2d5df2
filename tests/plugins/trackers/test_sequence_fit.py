"""The per-frame fit of a tracked sequence (issue #16): the closed-form jaw rig, its analytic
Jacobian, and the ``mediapipe`` tracker's ``sequence()`` (identity once, warm starts, landmarks of
whole frames). Checked against autodiff and against the general ``LandmarkRig``, not against
themselves; the MediaPipe parts are skipped without ``mediapipe==0.10.21``.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from gshead.core.components import BuildContext, FrameLandmarker, SequenceTracker
from gshead.core.geometry import rotvec_derivatives, rotvec_to_rotmat
from gshead.core.types import Camera
from gshead.plugins.headmodels.procedural import ProceduralHeadModel
from gshead.plugins.trackers._fit import JawRig, fit_frames, frame_residuals
from gshead.plugins.trackers.mediapipe import (
    MEDIAPIPE_POINTS,
    MediapipeTracker,
    MediapipeTrackerConfig,
    mediapipe_indices,
    project_landmarks,
)


pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def head():
    return ProceduralHeadModel()


@pytest.mark.parametrize("scale", [1.0, 1e-3, 1e-6, 0.0])
def test_rotvec_derivatives_match_autodiff(scale):
    v = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * scale
    auto = torch.func.vmap(torch.func.jacfwd(rotvec_to_rotmat))(v).permute(0, 3, 1, 2)  # [B, a, 3, 3]
    assert torch.allclose(rotvec_derivatives(v), auto, atol=1e-10)


def _rig(head, identity_scale=0.4, columns=(0, 3, 5, 7)):
    rig = head.landmark_rig(torch.arange(len(head.landmark_names)))
    gen = torch.Generator().manual_seed(2)
    identity = torch.randn(rig.identity_dim, generator=gen) * identity_scale
    return rig.with_identity(identity, rig.identity_dim + torch.tensor(columns))


def test_jaw_rig_equals_the_landmark_rig(head):
    """With only the jaw turned (the eyes at rest), the closed form is the skinned rig, pose
    correctives included (the procedural head has a pose basis)."""
    local = _rig(head)
    assert local.pose_basis is not None
    gen = torch.Generator().manual_seed(3)
    expr, jaw = torch.randn(5, 4, generator=gen) * 0.5, torch.randn(5, 3, generator=gen) * 0.3
    full = local(expr, jaw)
    assert torch.allclose(JawRig(local)(expr, jaw), full, atol=1e-6 * float(full.abs().max()))
    assert not torch.allclose(JawRig(local)(expr, jaw * 0), full, atol=1e-3)  # the jaw matters


def test_frame_jacobian_matches_autodiff(head):
    rig = JawRig(_rig(head))
    rig64 = JawRig.__new__(JawRig)
    rig64.__dict__.update({k: v.double() if torch.is_tensor(v) else v for k, v in rig.__dict__.items()})
    gen = torch.Generator().manual_seed(4)
    b, k = 3, len(head.landmark_names)
    cam = Camera.frontal(1.0, 18.0, 256, 256, b)
    w2c, kk = cam.world_to_camera.double(), cam.intrinsics.double()
    x = torch.randn(b, 13, dtype=torch.float64, generator=gen) * 0.2
    targets = torch.rand(b, k, 2, dtype=torch.float64, generator=gen) * 256

    def one(xi, ti, wi, ki):
        return frame_residuals(rig64, xi[None], ti[None], wi[None], ki[None], 2.56, 1e-2, 1e-1, False)[0][0]

    _, _, jac = frame_residuals(rig64, x, targets, w2c, kk, 2.56, 1e-2, 1e-1)
    auto = torch.func.vmap(torch.func.jacfwd(one))(x, targets, w2c, kk)
    assert torch.allclose(jac, auto, atol=1e-9 * float(auto.abs().max()))


def test_fit_frames_recovers_known_pose_jaw_and_expression(head):
    """Landmarks projected from known per-frame parameters with a known identity: starting
    from the previous frame's truth (as a sequence does), the fit lands on the truth."""
    names = head.expression_names
    fitted = ("eyeBlinkLeft", "mouthSmileLeft", "mouthSmileRight", "browInnerUp")
    expr_index = torch.tensor([names.index(n) for n in fitted])
    b = 4
    gen = torch.Generator().manual_seed(5)
    identity = torch.randn(head.identity_dim, generator=gen) * 0.3
    expr = torch.zeros(b, len(names))
    expr[:, expr_index] = torch.rand(b, len(fitted), generator=gen) * 0.6
    t = torch.arange(b, dtype=torch.float32)[:, None]
    true = head.neutral(b).replace(
        identity=identity.expand(b, -1).clone(),
        expression=expr,
        rotation=torch.tensor([0.05, -0.2, 0.08]) + 0.03 * t,
        translation=torch.tensor([0.01, -0.01, 0.03]) + 0.005 * t,
        jaw=torch.tensor([0.1, 0.0, 0.0]) + 0.02 * t * torch.tensor([1.0, 0.0, 0.0]),
    )
    cam = Camera.frontal(1.0, 18.0, 512, 512, b)
    targets = project_landmarks(head, true, cam)
    rig = head.landmark_rig(torch.arange(len(head.landmark_names)))
    jaw_rig = JawRig(rig.with_identity(identity, rig.identity_dim + expr_index))
    x_true = torch.cat([true.rotation, true.translation, true.jaw, expr[:, expr_index]], 1)
    x0 = torch.cat([x_true[:1], x_true[:-1]])  # each frame starts from the previous one's truth
    x, uv = fit_frames(jaw_rig, targets, cam.world_to_camera, cam.intrinsics, 5.12, x0, 60, 1e-6, 1e-6)
    assert (uv - targets).norm(dim=-1).max() < 0.05  # pixels
    assert torch.allclose(x[:, :9], x_true[:, :9], atol=2e-3)


def _points_for(head, tracker, targets):
    """MediaPipe-style [B, 478, 2] points whose landmark targets are ``targets`` [B, K, 2]."""
    points = torch.full((targets.shape[0], MEDIAPIPE_POINTS, 2), 0.0)
    for j, name in enumerate(tracker.landmark_names):
        for i in mediapipe_indices(name):
            points[:, i] = targets[:, j]
    return points


def test_sequence_fits_the_identity_once_and_starts_from_the_last_frame(head, monkeypatch):
    tracker = MediapipeTracker(MediapipeTrackerConfig(), BuildContext(8, head))
    seq = tracker.sequence()
    assert isinstance(tracker, SequenceTracker) and isinstance(seq, FrameLandmarker)
    gen = torch.Generator().manual_seed(6)
    b = 6
    true = head.neutral(b).replace(
        identity=(torch.randn(head.identity_dim, generator=gen) * 0.3).expand(b, -1).clone(),
        rotation=torch.randn(b, 3, generator=gen) * 0.1,
        jaw=torch.tensor([0.1, 0.0, 0.0]).expand(b, -1).clone(),
    )
    cam = Camera.frontal(1.0, 18.0, 256, 256, b)
    model_index = [head.landmark_names.index(n) for n in tracker.landmark_names]
    points = _points_for(head, tracker, project_landmarks(head, true, cam)[:, model_index])
    first, err1 = seq.fit_points(points[:3], 256)
    identity = seq.identity.clone()

    import gshead.plugins.trackers._fit as fit_module

    calls = []
    original = fit_module.fit_frames
    monkeypatch.setattr(fit_module, "fit_frames", lambda *a, **k: calls.append(a[5].clone()) or original(*a, **k))
    second, err2 = seq.fit_points(points[3:], 256)
    assert torch.equal(seq.identity, identity)  # not refitted
    assert torch.equal(second.params.identity, identity.expand(3, -1))
    assert len(calls) == 1  # stage 2 only, started from the last frame of the first call
    last = first.params.select(2)
    assert torch.allclose(calls[0][0, :3], last.rotation[0]) and torch.allclose(calls[0][0, 6:9], last.jaw[0])
    assert float(err1.max()) < 1.0 and float(err2.max()) < 1.0  # pixels of a 256 px crop
    fresh = tracker.sequence()
    assert fresh.identity is None  # a new sequence starts afresh


def test_tracking_a_video_without_a_face_names_the_file_and_the_reason():
    from gshead.core.errors import InputError
    from gshead.jobs.tracking import track_video

    pytest.importorskip("mediapipe")
    tracker = MediapipeTracker(MediapipeTrackerConfig(), BuildContext(8, ProceduralHeadModel()))
    grey = [torch.full((1, 3, 96, 96), 0.5) for _ in range(3)]
    with pytest.raises(InputError, match=r"clip\.mp4: no face found in any of its 3 frames \(no face found"):
        track_video(tracker, grey, head_model="procedural", crop_size=64, source="clip.mp4")


def test_frame_boxes_match_the_detector(head):
    """``locate`` on whole frames gives the detector's face box (calibrated on the first frame)
    on later, moved frames too: within 6% of the face side."""
    pytest.importorskip("mediapipe")
    import numpy as np
    from PIL import Image
    from skimage.data import astronaut

    tracker = MediapipeTracker(MediapipeTrackerConfig(), BuildContext(8, head))
    seq = tracker.sequence()
    image = Image.fromarray(astronaut())
    for i, (angle, shift) in enumerate([(0, 0), (8, 10), (-8, -12), (4, 20)]):
        moved = image.rotate(angle, resample=Image.BILINEAR, center=(235, 115), translate=(shift, shift // 2))
        frame = torch.from_numpy(np.asarray(moved).copy()).permute(2, 0, 1)[None].float() / 255
        located = seq.locate(frame)
        detected = tracker.detect_faces(frame)[0]
        assert located is not None and located.points.shape == (MEDIAPIPE_POINTS, 2)
        side = detected[2]
        centre_l = (located.face[0] + located.face[2] / 2, located.face[1] + located.face[2] / 2)
        centre_d = (detected[0] + side / 2, detected[1] + side / 2)
        assert math.dist(centre_l, centre_d) < 0.06 * side, (i, located.face, detected)
        assert abs(located.face[2] - side) < 0.06 * side, (i, located.face, detected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert seq.locate(torch.full((1, 3, 128, 128), 0.5)) is None


def test_tracking_follows_a_known_zoom_and_pan(head):
    """The astronaut zoomed (0.8x to 1.25x) and panned (+-30 px) about her face by known amounts:
    the tracked crop box follows both (correlation >= 0.95), so the fitted head stays in place."""
    pytest.importorskip("mediapipe")
    import numpy as np
    from PIL import Image
    from skimage.data import astronaut

    from gshead.jobs.tracking import track_video

    image = Image.fromarray(astronaut())
    zooms = [0.8 + 0.45 * i / 9 for i in range(10)]
    pans = [30.0 * math.sin(2 * math.pi * i / 10) for i in range(10)]
    frames = []
    for zoom, pan in zip(zooms, pans):
        moved = image.transform(
            image.size, Image.AFFINE, (1 / zoom, 0, 235 - (235 + pan) / zoom, 0, 1 / zoom, 115 - 115 / zoom),
            resample=Image.BILINEAR,
        )  # output pixel p shows input (p - centre - pan) / zoom + centre: face at 235 + pan, scaled by zoom
        frames.append(torch.from_numpy(np.asarray(moved).copy()).permute(2, 0, 1)[None].float() / 255)
    tracker = MediapipeTracker(MediapipeTrackerConfig(), BuildContext(8, head))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seq = track_video(tracker, frames, head_model="procedural", crop_size=256, smoothing=0.0)
    assert seq.valid.all() and (seq.fit_error < 0.03 * 256).all()
    side = seq.crop[:, 2].double()
    centre_x = (seq.crop[:, 0] + seq.crop[:, 2] / 2).double()
    corr = lambda a, b: float(torch.corrcoef(torch.stack([a, torch.tensor(b, dtype=torch.float64)]))[0, 1])
    assert corr(side, zooms) >= 0.95, side.tolist()
    assert corr(centre_x, pans) >= 0.95, centre_x.tolist()
    ratio = side / torch.tensor(zooms, dtype=torch.float64)
    assert float(ratio.max() / ratio.min()) < 1.15  # the box scales with the face
