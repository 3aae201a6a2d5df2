"""GAGAvatar_track output -> gshead sequences: fields, exact camera conversion, round trip."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from gshead.core.errors import InputError
from gshead.core.geometry import project_points
from gshead.core.types import Camera
from gshead.io.gagavatar_track import (
    official_to_camera,
    poses_relative_to,
    read_gagavatar_track,
    to_gagavatar_track,
    track_frame,
)
from gshead.io.sequence import load_sequence, save_sequence


def _rot(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = (f(a) for a in (yaw, pitch, roll) for f in (math.cos, math.sin))
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return ry @ rx @ rz


def synthetic_track(n: int = 5, seed: int = 0) -> dict:
    """What GAGAvatar_track pickles: {'<video>_<i>': {bbox, shapecode, expcode, posecode, eyecode,
    transform_matrix}} (float32 arrays; global pose 0; keys deliberately out of order)."""
    rng = np.random.default_rng(seed)
    shape = rng.normal(size=300).astype(np.float32)
    out = {}
    for i in rng.permutation(n):
        r = _rot(*(rng.uniform(-0.4, 0.4, 3)))
        t = np.array([rng.uniform(-0.1, 0.1), rng.uniform(-0.1, 0.1), rng.uniform(12.0, 16.0)])
        out[f"clip_{i}"] = {
            "bbox": np.array([0.2, 0.2, 0.8, 0.8], np.float32),
            "shapecode": shape,
            "expcode": rng.normal(size=100).astype(np.float32),
            "posecode": np.concatenate([np.zeros(3), rng.normal(scale=0.1, size=3)]).astype(np.float32),
            "eyecode": rng.normal(scale=0.1, size=6).astype(np.float32),
            "transform_matrix": np.concatenate([r, t[:, None]], 1).astype(np.float32),
        }
    return out


def pytorch3d_pixels(points_x5: np.ndarray, transform: np.ndarray, size: int = 512, focal: float = 12.0):
    """pytorch3d's convention written out: x_cam = x R + T (+X left, +Y up), NDC = focal * (X, Y) / Z,
    pixel = size / 2 * (1 - NDC)."""
    cam = points_x5 @ transform[:, :3] + transform[:, 3]
    ndc = focal * cam[:, :2] / cam[:, 2:]
    return size / 2 * (1 - ndc)


def test_fields_order_and_exact_camera(tmp_path):
    track = synthetic_track()
    path = tmp_path / "optim.pkl"
    path.write_bytes(pickle.dumps(track))
    seq = read_gagavatar_track(path)
    keys = [f"clip_{i}" for i in range(5)]
    assert seq.head_model == "flame" and len(seq) == 5 and bool(seq.valid.all())
    assert len(seq.source_sha256) == 64
    for i, k in enumerate(keys):
        rec = track[k]
        assert torch.equal(seq.params.identity[i], torch.from_numpy(rec["shapecode"]))
        assert torch.equal(seq.params.expression[i], torch.from_numpy(rec["expcode"]))
        assert torch.equal(seq.params.jaw[i], torch.from_numpy(rec["posecode"][3:]))
        assert torch.equal(seq.params.eyes[i], torch.from_numpy(rec["eyecode"]))
    assert seq.params.rotation.abs().max() == 0 and seq.params.translation.abs().max() == 0
    pts = np.random.default_rng(1).uniform(-1.0, 1.0, size=(50, 3))  # FLAME x 5 units
    ours = project_points(torch.from_numpy(pts / 5.0).float()[None].expand(5, -1, -1), seq.camera)  # [5, 50, 2]
    for i, k in enumerate(keys):
        expected = pytorch3d_pixels(pts, track[k]["transform_matrix"].astype(np.float64))
        assert np.allclose(ours[i].double().numpy(), expected, atol=1e-3)
    w2c = seq.camera.world_to_camera
    assert torch.allclose(w2c[:, :3, :3] @ w2c[:, :3, :3].transpose(1, 2), torch.eye(3).expand(5, 3, 3), atol=1e-5)


def test_round_trip_through_a_sequence_file(tmp_path):
    track = synthetic_track(seed=3)
    seq = read_gagavatar_track(track)
    save_sequence(tmp_path / "seq.safetensors", seq)
    back = to_gagavatar_track(load_sequence(tmp_path / "seq.safetensors"), prefix="clip")
    assert sorted(back) == sorted(track)
    for k, rec in track.items():
        for field in ("shapecode", "expcode", "posecode", "eyecode"):
            assert np.array_equal(back[k][field], rec[field]), field
        assert np.allclose(back[k]["transform_matrix"], rec["transform_matrix"], atol=1e-5)


def test_global_pose_becomes_the_root_rotation(tmp_path):
    """``posecode[:3]`` (FLAME's global pose; GAGAvatar_track writes 0 there, edited or other
    trackers' files may not) -> ``HeadParams.root``, not camera motion; None when all are 0, and
    back through a sequence file and ``to_gagavatar_track`` bit for bit."""
    track = synthetic_track(3, seed=6)
    assert read_gagavatar_track(track).params.root is None  # the official tracker's output
    posed = {k: dict(v) for k, v in track.items()}
    posed["clip_1"]["posecode"] = np.array([0.1, -0.3, 0.05, 0.2, 0.0, 0.01], np.float32)
    seq = read_gagavatar_track(posed)
    assert seq.params.root is not None and tuple(seq.params.root.shape) == (3, 3)
    assert torch.equal(seq.params.root[1], torch.tensor([0.1, -0.3, 0.05]))
    assert seq.params.root[[0, 2]].abs().max() == 0
    assert torch.equal(seq.params.jaw[1], torch.tensor([0.2, 0.0, 0.01]))
    assert seq.params.rotation.abs().max() == 0 and seq.params.translation.abs().max() == 0
    assert torch.equal(seq.camera.world_to_camera, read_gagavatar_track(track).camera.world_to_camera)
    # the cameras' head pose and the root are independent: poses_relative_to / track_frame keep it
    params = poses_relative_to(seq, _source_camera())
    assert torch.equal(params.root, seq.params.root)
    assert torch.equal(track_frame(seq, "clip_1")[0].root, seq.params.root[1:2])
    save_sequence(tmp_path / "seq.safetensors", seq)
    loaded = load_sequence(tmp_path / "seq.safetensors")
    assert torch.equal(loaded.params.root, seq.params.root)
    back = to_gagavatar_track(loaded, prefix="clip")
    for k, rec in posed.items():
        assert np.array_equal(back[k]["posecode"], rec["posecode"]), k


def test_refusals(tmp_path):
    track = synthetic_track(2)
    short = {k: {f: a for f, a in v.items() if f != "eyecode"} for k, v in track.items()}
    with pytest.raises(InputError, match="no 'eyecode'"):
        read_gagavatar_track(short)

    class Evil:
        def __reduce__(self):
            return (print, ("ran",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"clip_0": Evil()}))
    with pytest.raises(InputError):
        read_gagavatar_track(path)


# ------------------------------------------------------------------------------- driving poses
def _source_camera(seed: int = 7, size: int = 512) -> Camera:
    """A GAGAvatar source camera (the official layout, converted), at ``size`` pixels."""
    rng = np.random.default_rng(seed)
    r = _rot(*(rng.uniform(-0.3, 0.3, 3)))
    t = np.array([0.05, -0.03, 13.5])
    transform = torch.from_numpy(np.concatenate([r, t[:, None]], 1)).float()[None]
    return official_to_camera(transform, size)


def test_poses_relative_to_reproduce_every_frame_camera():
    seq = read_gagavatar_track(synthetic_track(6, seed=5))
    source = _source_camera()
    params = poses_relative_to(seq, source)
    for field in ("identity", "expression", "jaw", "eyes"):
        assert torch.equal(getattr(params, field), getattr(seq.params, field)), field
    assert params.rotation.abs().max() > 0.05  # the frames' head pose is now in the params
    moved = source.moved(params.pose_matrix())
    assert torch.allclose(moved.world_to_camera, seq.camera.world_to_camera, atol=1e-5)
    assert torch.allclose(moved.intrinsics, seq.camera.intrinsics, atol=1e-5)
    # the source camera at another size (intrinsics rescaled) gives the same poses
    small = poses_relative_to(seq, source.resized(64, 64))
    assert torch.allclose(small.rotation, params.rotation, atol=1e-6)
    assert torch.allclose(small.translation, params.translation, atol=1e-6)
    # the frame that was the source has the identity pose
    same = poses_relative_to(seq, track_frame(seq, 2)[1])
    assert same.rotation[2].abs().max() < 1e-5 and same.translation[2].abs().max() < 1e-6


def test_poses_relative_to_compose_a_sequence_head_pose():
    seq = read_gagavatar_track(synthetic_track(3, seed=2))
    posed = seq.params.replace(rotation=torch.tensor([[0.1, -0.2, 0.05]] * 3), translation=torch.full((3, 3), 0.01))
    seq = seq.replace(params=posed)
    source = _source_camera(1)
    params = poses_relative_to(seq, source)
    expected = seq.camera.moved(posed.pose_matrix()).world_to_camera
    assert torch.allclose(source.moved(params.pose_matrix()).world_to_camera, expected, atol=1e-5)


def test_poses_relative_to_refuses_other_intrinsics():
    seq = read_gagavatar_track(synthetic_track(2))
    source = _source_camera()
    other = Camera(source.world_to_camera, source.intrinsics * torch.tensor([[1.1], [1.1], [1.0]]), 512, 512)
    with pytest.raises(InputError, match="intrinsics differ") as info:
        poses_relative_to(seq, other)
    assert "\n" not in str(info.value)


def test_track_frame_by_index_key_and_default():
    track = synthetic_track(4, seed=9)
    seq = read_gagavatar_track(track)
    p0, c0 = track_frame(seq)
    p2, c2 = track_frame(seq, "clip_2")
    assert p0.batch_size == c0.batch_size == 1
    assert torch.equal(p0.expression[0], torch.from_numpy(track["clip_0"]["expcode"]))
    assert torch.equal(p2.expression, track_frame(seq, "2")[0].expression)
    assert torch.equal(c2.world_to_camera, track_frame(seq, -2)[1].world_to_camera)
    for bad in ("7", "nope"):
        with pytest.raises(InputError, match="frame"):
            track_frame(seq, bad)


def test_torch_saved_track(tmp_path):
    track = synthetic_track(3, seed=4)
    path = tmp_path / "optim.pt"
    torch.save({k: {f: torch.from_numpy(v) for f, v in rec.items()} for k, rec in track.items()}, path)
    seq = read_gagavatar_track(path)
    assert torch.equal(seq.camera.world_to_camera, read_gagavatar_track(track).camera.world_to_camera)
    path.write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(InputError, match="weights-only torch file"):
        read_gagavatar_track(path)


def test_root_as_pose_turns_the_head_about_the_joint():
    """``HeadParams.root_as_pose``: the root rotation about ``joint0`` folded into the head pose, so
    ``pose_matrix()`` maps a point as ``pose(j0 + R_root (x - j0))``."""
    import roma

    from gshead.core.types import HeadParams

    g = torch.Generator().manual_seed(2)
    p = HeadParams.zeros(4, 5, batch_size=3).replace(
        rotation=0.3 * torch.randn(3, 3, generator=g), translation=0.05 * torch.randn(3, 3, generator=g),
        root=0.4 * torch.randn(3, 3, generator=g),
    )
    j0 = 0.1 * torch.randn(3, 3, generator=g)
    x = torch.randn(3, 7, 3, generator=g)
    folded = p.root_as_pose(j0)
    assert folded.root is None and p.replace(root=None).root_as_pose(j0).root is None
    m = folded.pose_matrix()
    ours = x @ m[:, :3, :3].transpose(1, 2) + m[:, None, :3, 3]
    turned = j0[:, None] + (x - j0[:, None]) @ roma.rotvec_to_rotmat(p.root).transpose(1, 2)
    pm = p.pose_matrix()
    expected = turned @ pm[:, :3, :3].transpose(1, 2) + pm[:, None, :3, 3]
    assert torch.allclose(ours, expected, atol=1e-5)


def test_relative_driving_composes_the_root():
    """Relative driving composes ``root`` like the jaw: the reference frame reproduces the source's
    root; without any root it stays None."""
    from gshead.core.types import HeadParams
    from gshead.jobs.driving import relative_to_source

    seq = read_gagavatar_track(synthetic_track(3, seed=8))
    frames = seq.params.replace(root=torch.tensor([[0.0, 0.2, 0.0], [0.0, 0.5, 0.0], [0.1, 0.0, 0.0]]))
    source = HeadParams.zeros(300, 100).replace(root=torch.tensor([[0.0, -0.1, 0.0]]))
    out = relative_to_source(frames, source, frames.select(0))
    assert torch.allclose(out.root[0], source.root[0], atol=1e-6)
    assert torch.allclose(out.root[1], torch.tensor([0.0, 0.2, 0.0]), atol=1e-6)  # +0.3 yaw on -0.1
    assert relative_to_source(seq.params, HeadParams.zeros(300, 100), seq.params.select(0)).root is None
