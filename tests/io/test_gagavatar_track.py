"""GAGAvatar_track output -> gshead sequences: fields, exact camera conversion, round trip."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch

from gshead.core.errors import InputError
from gshead.core.geometry import project_points
from gshead.io.gagavatar_track import read_gagavatar_track, to_gagavatar_track
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


def test_refusals(tmp_path):
    track = synthetic_track(2)
    bad = {k: dict(v) for k, v in track.items()}
    bad["clip_1"]["posecode"] = np.array([0.1, 0, 0, 0, 0, 0], np.float32)
    with pytest.raises(InputError, match="non-zero global pose"):
        read_gagavatar_track(bad)
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
