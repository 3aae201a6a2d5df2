"""``gshead track`` and ``gshead reenact --driver VIDEO`` (the same tracking path and cache).

Images use the tiny test pipeline with the ``frontal`` tracker cropping on scikit-image's face
cascade; videos the same pipeline with the ``mediapipe`` tracker (``frontal`` fits no motion and is
refused for videos). Frames of the astronaut have a face, flat grey frames do not.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml

from gshead.cli import main
from gshead.io.media import VideoWriter, probe_video, read_image
from gshead.io.sequence import load_sequence
from gshead.testing import tiny_pipeline


@pytest.fixture(autouse=True)
def _own_cache(tmp_path_factory, monkeypatch):
    """A fresh tracking cache per test, so cache hits and misses are the test's own."""
    monkeypatch.setenv("GSHEAD_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def pipeline_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_pipeline(tracker={"name": "frontal", "crop": "face"})))
    return path


@pytest.fixture(scope="module")
def video_yaml(tmp_path_factory):
    pytest.importorskip("mediapipe", reason="video tracking uses the mediapipe tracker")
    path = tmp_path_factory.mktemp("pipe") / "tiny-mediapipe.yaml"
    path.write_text(yaml.safe_dump(tiny_pipeline(tracker={"name": "mediapipe"})))
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """4 frames at 256 px: astronaut, astronaut shifted, flat grey (no face), astronaut."""
    astronaut = F.interpolate(read_image("example:astronaut"), size=(256, 256), mode="area")
    frames = [astronaut, torch.roll(astronaut, 6, dims=3), torch.full_like(astronaut, 0.5), astronaut]
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    with VideoWriter(path, 25, 256, 256) as writer:
        writer.write(torch.cat(frames))
    return path


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def test_track_image_writes_a_sequence_and_reruns_from_the_cache(tmp_path, pipeline_yaml, capsys):
    out = tmp_path / "seq.safetensors"
    args = ["track", "example:astronaut", "-o", str(out), "--pipeline", str(pipeline_yaml), "-q"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "tracker 'frontal' does not fit landmarks; fit errors are NaN" in err
    seq = load_sequence(out)
    assert len(seq) == 1 and seq.valid.all() and torch.isnan(seq.fit_error).all()
    assert (seq.camera.width, seq.camera.height) == (64, 64) and seq.head_model == "procedural"
    assert 150 < float(seq.crop[0, 2]) < 300  # the face crop of the 512 px astronaut
    assert len(seq.source_sha256) == 64 and '"frontal"' in seq.tracker
    assert main(args) == 0
    assert "(from the cache)" in capsys.readouterr().err
    again = load_sequence(out)
    for key, value in seq.tensors().items():
        assert torch.allclose(again.tensors()[key], value, rtol=0, atol=0, equal_nan=True), key
    assert main([*args, "--no-cache"]) == 0
    assert "(from the cache)" not in capsys.readouterr().err


def test_image_without_a_face_is_one_line_and_writes_nothing(tmp_path, pipeline_yaml, capsys):
    from PIL import Image

    Image.new("RGB", (96, 96), (90, 120, 90)).save(tmp_path / "flat.png")
    out = tmp_path / "seq.safetensors"
    code = main(["track", str(tmp_path / "flat.png"), "-o", str(out), "--pipeline", str(pipeline_yaml), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no face found" in err[0] and "40 px" in err[0]
    assert _files(tmp_path) == ["flat.png"]


def test_a_tracker_without_motion_is_refused_for_a_video(tmp_path, pipeline_yaml, clip, capsys):
    out = tmp_path / "seq.safetensors"
    code = main(["track", str(clip), "-o", str(out), "--pipeline", str(pipeline_yaml), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "'frontal' fits no motion" in err[0] and "mediapipe" in err[0] and "clip.mp4" in err[0]
    assert not out.exists()


def test_track_video_flags_the_faceless_frame(tmp_path, video_yaml, clip, capsys):
    out = tmp_path / "seq.safetensors"
    with pytest.warns(UserWarning, match=r"no face in 1 of 4 frames \(2\)"):
        code = main(
            ["track", str(clip), "-o", str(out), "--pipeline", str(video_yaml), "-q", "--smoothing", "0"]
        )
    assert code == 0
    seq = load_sequence(out)
    assert seq.valid.tolist() == [True, True, False, True] and seq.fps == pytest.approx(25.0)
    assert torch.allclose(seq.crop[2], seq.crop[1])  # the box is held over the face-less frame
    assert seq.crop[1, 0] > seq.crop[0, 0] + 3  # and followed the face when it moved (6 px)


def test_truncated_video_is_one_line_and_writes_nothing(tmp_path, video_yaml, capsys):
    rng = torch.Generator().manual_seed(0)
    with VideoWriter(tmp_path / "noise.mp4", 25, 64, 48) as writer:
        writer.write(torch.rand(20, 3, 48, 64, generator=rng))
    data = (tmp_path / "noise.mp4").read_bytes()
    (tmp_path / "noise.mp4").unlink()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])
    out = tmp_path / "seq.safetensors"
    code = main(["track", str(tmp_path / "cut.mp4"), "-o", str(out), "--pipeline", str(video_yaml), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cut.mp4" in err[0]
    assert _files(tmp_path) == ["cut.mp4"]


@pytest.mark.slow
def test_reenact_with_a_video_driver_goes_through_the_same_tracking_and_cache(
    tmp_path, video_yaml, clip, monkeypatch, capsys
):
    pipeline_yaml = video_yaml
    import gshead.jobs.tracking as tracking

    seq_path = tmp_path / "seq.safetensors"
    with pytest.warns(UserWarning):
        assert main(["track", str(clip), "-o", str(seq_path), "--pipeline", str(pipeline_yaml), "-q"]) == 0
    avatar = tmp_path / "a.safetensors"
    assert (
        main(["reconstruct", "example:astronaut", "-o", str(avatar), "--pipeline", str(pipeline_yaml), "-q"])
        == 0
    )

    def no_tracking(*args, **kwargs):
        raise AssertionError("reenact tracked the video again instead of using the cache")

    monkeypatch.setattr(tracking, "track_video", no_tracking)
    video = tmp_path / "out.mp4"
    assert main(["reenact", str(avatar), "--driver", str(clip), "-o", str(video), "-q"]) == 0
    assert probe_video(video).frames == 4
