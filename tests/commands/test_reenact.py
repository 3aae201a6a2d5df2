"""``gshead reenact`` options: --side-by-side, --camera orbit, PNG grids, --size and --fps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from gshead.cli import main
from gshead.commands._views import DriverPanels, grid_shape, orbit_cameras, tile_grid
from gshead.io.media import VideoWriter, probe_video
from gshead.core.types import Camera
from gshead.testing import sample_image, tiny_pipeline


@pytest.fixture(scope="module")
def avatar_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reenact")
    cfg = folder / "tiny.yaml"
    cfg.write_text(
        yaml.safe_dump(tiny_pipeline(rasterizer={"name": "cpu"})), encoding="utf-8"
    )  # torch-tiles is too slow here
    out = folder / "a.safetensors"
    assert main(["reconstruct", "example:astronaut", "-o", str(out), "--pipeline", str(cfg), "-q"]) == 0
    return out


def _png(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float64) / 255.0  # [H, W, 3]


def _tiles(grid: np.ndarray, rows: int, columns: int) -> list[np.ndarray]:
    h, w = grid.shape[0] // rows, grid.shape[1] // columns
    return [grid[r * h : (r + 1) * h, c * w : (c + 1) * w] for r in range(rows) for c in range(columns)]


def _reenact(avatar_file, out, *extra) -> None:
    assert main(["reenact", str(avatar_file), "--driver", "demo", "-o", str(out), "-q", *extra]) == 0


# ------------------------------------------------------------------------------- size / fps / grid
def test_size_and_fps_are_what_the_video_reports(avatar_file, tmp_path):
    video = tmp_path / "v.mp4"
    _reenact(avatar_file, video, "--frames", "6", "--size", "40", "--fps", "10")
    info = probe_video(video)
    assert (info.frames, info.width, info.height) == (6, 40, 40)
    assert info.fps == pytest.approx(10.0)


def test_png_grid_tiles_every_frame(avatar_file, tmp_path):
    out = tmp_path / "grid.png"
    _reenact(avatar_file, out, "--frames", "5", "--size", "32")
    assert grid_shape(5) == (2, 3)
    grid = _png(out)
    assert grid.shape == (2 * 32, 3 * 32, 3)
    tiles = _tiles(grid, 2, 3)
    assert np.all(tiles[5] == 0)  # the unused sixth cell is black
    assert tiles[0].mean() > 0.05  # a rendered frame is not blank
    assert not np.array_equal(tiles[0], tiles[1])  # the demo moves


def test_tile_grid_matches_a_loop():
    frames = torch.rand(7, 3, 4, 5)
    grid = tile_grid(frames, columns=3)
    assert grid.shape == (3, 3 * 4, 3 * 5)
    for i in range(9):
        r, c = divmod(i, 3)
        expected = frames[i] if i < 7 else torch.zeros(3, 4, 5)
        assert torch.equal(grid[:, r * 4 : (r + 1) * 4, c * 5 : (c + 1) * 5], expected)


# ------------------------------------------------------------------------------- orbit
def test_orbit_cameras_circle_the_pivot():
    cam = Camera.frontal(1.0, 18.0, 32, 32)
    pivot = torch.tensor([0.0, 0.0, 0.05])
    orbit = orbit_cameras(cam, 8, 30.0, pivot)
    assert orbit.batch_size == 8
    assert torch.allclose(
        orbit.world_to_camera[0], cam.world_to_camera[0], atol=1e-6
    )  # frame 0: the source view
    centres = [torch.linalg.inv(m)[:3, 3] for m in orbit.world_to_camera]  # camera centres in the world
    radius = (centres[0] - pivot).norm()
    for c in centres:
        assert torch.isclose((c - pivot).norm(), radius, atol=1e-5)  # same distance to the head
        assert torch.isclose(c[1], centres[0][1], atol=1e-6)  # stays level
    a, b = centres[0] - pivot, centres[2] - pivot  # a quarter of the clip: the full +30 degrees
    angle = math.degrees(math.acos(float(a @ b / (a.norm() * b.norm()))))
    assert angle == pytest.approx(30.0, abs=1e-3)


def test_orbit_changes_views_but_keeps_frame_zero(avatar_file, tmp_path):
    fixed, orbit = tmp_path / "fixed.png", tmp_path / "orbit.png"
    _reenact(avatar_file, fixed, "--frames", "4", "--size", "32")
    _reenact(
        avatar_file, orbit, "--frames", "4", "--size", "32", "--camera", "orbit", "--orbit-degrees", "40"
    )
    a, b = _tiles(_png(fixed), 2, 2), _tiles(_png(orbit), 2, 2)
    assert np.abs(a[0] - b[0]).max() <= 1 / 255 + 1e-9  # frame 0: same camera
    assert np.abs(a[1] - b[1]).mean() > 0.01  # frame 1: a turned camera


def test_bad_orbit_degrees_is_one_line(avatar_file, tmp_path, capsys):
    out = tmp_path / "x.mp4"
    assert (
        main(
            [
                "reenact",
                str(avatar_file),
                "--driver",
                "demo",
                "-o",
                str(out),
                "--camera",
                "orbit",
                "--orbit-degrees",
                "500",
                "-q",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--orbit-degrees" in err[0]
    assert not out.exists()


# ------------------------------------------------------------------------------- side by side
def test_side_by_side_video_is_twice_as_wide(avatar_file, tmp_path):
    video = tmp_path / "sbs.mp4"
    _reenact(avatar_file, video, "--frames", "4", "--size", "32", "--side-by-side")
    info = probe_video(video)
    assert (info.frames, info.width, info.height) == (4, 64, 32)


def test_side_by_side_right_half_is_the_plain_result(avatar_file, tmp_path):
    plain, sbs = tmp_path / "p.png", tmp_path / "s.png"
    _reenact(avatar_file, plain, "--frames", "4", "--size", "32")
    _reenact(avatar_file, sbs, "--frames", "4", "--size", "32", "--side-by-side")
    a, b = _png(plain), _png(sbs)
    assert b.shape == (64, 128, 3)
    for pa, pb in zip(_tiles(a, 2, 2), _tiles(b, 2, 2)):
        assert np.array_equal(pb[:, 32:], pa)


def test_mesh_panel_shows_the_driving_parameters(avatar_file):
    from gshead.io.avatar import load_avatar

    loaded = load_avatar(avatar_file)
    panels = DriverPanels(loaded, "demo")
    params = loaded.head_model.neutral(2)
    params = params.replace(jaw=torch.tensor([[0.0, 0, 0], [0.4, 0, 0]]))
    cam = loaded.session(render_size=48).camera.expand(2)
    images = panels.render(params, cam)  # [2, 3, 48, 48]
    assert images.shape == (2, 3, 48, 48)
    centre = images[0, :, 18:30, 18:30]
    assert centre.mean() > 0.3 and (centre[0] > centre[2]).all()  # skin-coloured mesh in the middle
    assert not torch.allclose(images[0], images[1])  # the jaw opened


def _astronaut_clip(path, frames: int = 3, size: int = 256):
    """A short video of the astronaut shifted sideways a little each frame (a real face)."""
    from gshead.io.media import read_image

    face = torch.nn.functional.interpolate(read_image("example:astronaut"), size=(size, size), mode="area")
    clip = torch.cat([torch.roll(face, 4 * i, dims=3) for i in range(frames)])
    with VideoWriter(path, fps=10, width=size, height=size) as video:
        video.write(clip)
    return clip


@pytest.fixture(scope="module")
def mediapipe_avatar(tmp_path_factory):
    """The tiny pipeline with the mediapipe tracker (a tracker that fits motion, so it drives from videos)."""
    pytest.importorskip("mediapipe", reason="driving from a video needs a landmark tracker")
    folder = tmp_path_factory.mktemp("reenact-mp")
    cfg = folder / "tiny-mediapipe.yaml"
    cfg.write_text(yaml.safe_dump(tiny_pipeline(rasterizer={"name": "cpu"}, tracker={"name": "mediapipe"})))
    out = folder / "a.safetensors"
    assert main(["reconstruct", "example:astronaut", "-o", str(out), "--pipeline", str(cfg), "-q"]) == 0
    return out


def test_side_by_side_video_driver_shows_the_driving_frame(mediapipe_avatar, tmp_path, monkeypatch):
    from gshead.core.geometry import crop_square
    from gshead.core.types import CropBox
    from gshead.io.avatar import load_avatar
    from gshead.jobs.tracking import track_with_pipeline

    monkeypatch.setenv("GSHEAD_CACHE_DIR", str(tmp_path / "cache"))
    driving = tmp_path / "drive.mp4"
    frames = _astronaut_clip(driving)
    out = tmp_path / "sbs.png"
    args = ["reenact", str(mediapipe_avatar), "--driver", str(driving), "-o", str(out), "--size", "32", "--side-by-side", "-q"]
    assert main(args) == 0
    tiles = _tiles(_png(out), 2, 2)  # 3 frames -> 2 x 2
    seq, cached, _ = track_with_pipeline(driving, load_avatar(mediapipe_avatar).config)
    assert cached  # reenact tracked it through the same cache
    box = CropBox(*(float(v) for v in seq.crop[0]))
    assert 40 < box.side < 200  # the face crop, not the whole frame
    expected = crop_square(frames[:1], box, 32)[0]
    left = torch.from_numpy(tiles[0][:, :32]).permute(2, 0, 1)
    assert (left - expected.double()).abs().mean() < 0.05  # the (H.264-compressed) driving crop