"""GAGAvatar_track output on the CLI: ``reconstruct --source-track`` and ``reenact --driver optim.pkl``
on a tiny FLAME pipeline (a synthetic ``FLAME_with_eye.pt``; the real FLAME is licensed)."""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gshead.cli import main
from gshead.io.avatar import load_avatar
from gshead.io.gagavatar_track import poses_relative_to, read_gagavatar_track
from gshead.io.media import probe_video
from gshead.testing import tiny_pipeline

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "io"))
from test_gagavatar_track import synthetic_track

sys.path.pop(0)


def _script():
    spec = importlib.util.spec_from_file_location("record_gagavatar_reference", ROOT / "scripts" / "record_gagavatar_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gagtrack")
    flame = _script().write_synthetic_flame(folder / "FLAME_with_eye.pt")
    cfg = tiny_pipeline(headmodel={"name": "flame", "path": str(flame)}, rasterizer={"name": "cpu"})
    (folder / "flame.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny_pipeline(rasterizer={"name": "cpu"})), encoding="utf-8")
    track = synthetic_track(4, seed=11)
    (folder / "optim.pkl").write_bytes(pickle.dumps(track))
    avatar = folder / "flame.safetensors"
    args = ["reconstruct", "example:astronaut", "-o", str(avatar), "--pipeline", str(folder / "flame.yaml")]
    assert main([*args, "--source-track", f"{folder / 'optim.pkl'}:clip_1", "-q"]) == 0
    return folder, track, avatar


def _one_line_exit_2(argv, capsys, *needles):
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_reconstruct_takes_the_source_frame_from_the_track(files):
    folder, track, avatar_file = files
    loaded = load_avatar(avatar_file)
    avatar = loaded.avatar
    assert avatar.provenance.head_model == "flame"
    assert torch.equal(avatar.source.expression[0], torch.from_numpy(track["clip_1"]["expcode"]))
    assert torch.equal(avatar.source.jaw[0], torch.from_numpy(track["clip_1"]["posecode"][3:]))
    assert avatar.source.rotation.abs().max() == 0
    seq = read_gagavatar_track(folder / "optim.pkl")
    frame = seq.camera.resized(64, 64)  # tiny pipeline: source_size 64
    assert (avatar.camera.width, avatar.camera.height) == (64, 64)
    assert torch.allclose(avatar.camera.world_to_camera[0], frame.world_to_camera[1], atol=1e-6)
    assert torch.allclose(avatar.camera.intrinsics[0], frame.intrinsics[1], atol=1e-4)


def test_reenact_absolute_renders_one_frame_per_track_frame(files, tmp_path):
    folder, track, avatar_file = files
    out = tmp_path / "drive.mp4"
    argv = ["reenact", str(avatar_file), "--driver", str(folder / "optim.pkl"), "--absolute", "-o", str(out), "-q"]
    assert main([*argv, "--size", "32"]) == 0
    info = probe_video(out)
    assert (info.frames, info.width, info.height) == (len(track), 32, 32)
    # what the driver returns: driving the source camera by it gives every official camera
    loaded = load_avatar(avatar_file)
    seq = read_gagavatar_track(folder / "optim.pkl")
    params = poses_relative_to(seq, loaded.avatar.camera)
    moved = loaded.avatar.camera.moved(params.pose_matrix())
    assert torch.allclose(moved.world_to_camera, seq.camera.world_to_camera, atol=1e-5)
    # the source frame (clip_1) drives with the identity pose
    assert params.rotation[1].abs().max() < 1e-5 and params.translation[1].abs().max() < 1e-6
    assert main(["reenact", str(avatar_file), "--driver", str(folder / "optim.pkl"), "-o", str(tmp_path / "r.png"),
                 "-q", "--size", "16"]) == 0  # relative (the default) runs too


def test_a_track_with_a_global_pose_reconstructs_and_drives(files, tmp_path):
    """``posecode[:3]`` (no longer refused) is ``HeadParams.root``: the tiny pipeline's driver does not
    apply it, so the source's becomes head pose about joint 0 (the avatar stores it folded), and
    reenact drives with it, absolute and relative."""
    folder, track, _avatar = files
    posed = {k: dict(v) for k, v in track.items()}
    for i, k in enumerate(sorted(posed)):
        posed[k]["posecode"] = posed[k]["posecode"].copy()
        posed[k]["posecode"][:3] = np.array([0.05 * i, -0.2, 0.03], np.float32)
    pkl = tmp_path / "optim.pkl"
    pkl.write_bytes(pickle.dumps(posed))
    avatar = tmp_path / "posed.safetensors"
    args = ["reconstruct", "example:astronaut", "-o", str(avatar), "--pipeline", str(folder / "flame.yaml")]
    assert main([*args, "--source-track", f"{pkl}:clip_1", "-q"]) == 0
    source = load_avatar(avatar).avatar.source
    assert source.root is None and source.rotation.abs().max() > 0.1
    for extra in (["--absolute"], []):
        out = tmp_path / f"drive{len(extra)}.png"
        assert main(["reenact", str(avatar), "--driver", str(pkl), *extra, "-o", str(out), "-q", "--size", "16"]) == 0


def test_refusals_are_one_line(files, tmp_path, capsys):
    folder, _track, avatar_file = files
    track = str(folder / "optim.pkl")
    tiny = tmp_path / "tiny.safetensors"
    assert main(["reconstruct", "example:astronaut", "-o", str(tiny), "--pipeline", str(folder / "tiny.yaml"), "-q"]) == 0
    _one_line_exit_2(["reenact", str(tiny), "--driver", track, "-o", str(tmp_path / "x.mp4"), "-q"], capsys,
                     "FLAME", "'procedural'")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"not a pickle at all")
    _one_line_exit_2(["reenact", str(avatar_file), "--driver", str(bad), "-o", str(tmp_path / "x.mp4"), "-q"], capsys,
                     "bad.pkl")
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(pickle.dumps({}))
    _one_line_exit_2(["reenact", str(avatar_file), "--driver", str(empty), "-o", str(tmp_path / "x.mp4"), "-q"],
                     capsys, "GAGAvatar_track")
    recon = ["reconstruct", "example:astronaut", "-o", str(tmp_path / "y.safetensors"), "-q"]
    _one_line_exit_2([*recon, "--pipeline", str(folder / "tiny.yaml"), "--source-track", track], capsys,
                     "FLAME", "'procedural'")
    flame = ["--pipeline", str(folder / "flame.yaml")]
    _one_line_exit_2([*recon, *flame, "--source-track", f"{track}:9"], capsys, "out of range")
    _one_line_exit_2([*recon, *flame, "--source-track", str(bad)], capsys, "bad.pkl")
    from PIL import Image

    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(small)
    _one_line_exit_2(["reconstruct", str(small), "-o", str(tmp_path / "y.safetensors"), "-q", *flame,
                      "--source-track", track], capsys, "512x512")
