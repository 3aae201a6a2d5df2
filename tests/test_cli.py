"""The gshead command: listing, reconstruct -> reenact end to end, and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from gshead import __version__
from gshead.cli import main
from gshead.core.components import KINDS
from gshead.io.media import probe_video
from gshead.testing import tiny_pipeline


@pytest.fixture(scope="module")
def pipeline_yaml(tiny_pipeline_yaml):
    return tiny_pipeline_yaml


@pytest.fixture(scope="module")
def avatar_file(tiny_avatar_file):
    return tiny_avatar_file


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("gshead: error: ")
    return err[0]


def test_version_and_help():
    out = subprocess.run([sys.executable, "-m", "gshead", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"gshead {__version__}"


def test_plugins_json_lists_every_kind_with_source_and_fields(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["kind"] for r in rows} == set(KINDS)
    tiny = next(r for r in rows if r["name"] == "tiny-conv")
    assert tiny["source"] == "gshead"
    field = next(f for f in tiny["fields"] if f["name"] == "channels")
    assert field["default"] == 32 and field["description"]


def test_plugins_text_table(capsys):
    assert main(["plugins"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("encoder") and "tiny-conv" in line and "[gshead]" in line for line in lines)


def test_plugins_params_counts_every_encoder_variant_without_weights(capsys):
    assert main(["plugins", "--params", "--json"]) == 0
    rows = {r["name"]: r["parameters"] for r in json.loads(capsys.readouterr().out)}
    assert 21e6 < rows["dinov2"]["vits14"] < 23e6 and 85e6 < rows["dinov2"]["vitb14"] < 88e6
    assert rows["webssl"]["300m"] < rows["webssl"]["1b"] < rows["webssl"]["7b"]
    assert main(["plugins", "--params"]) == 0
    assert any("webssl" in line and "7b" in line for line in capsys.readouterr().out.splitlines())


def test_config_schema_is_json_schema(capsys):
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(KINDS) <= set(schema["properties"]) and schema["title"] == "PipelineConfig"


def test_reconstruct_then_reenact_demo_writes_the_expected_frames(avatar_file, tmp_path, capsys):
    video = tmp_path / "demo.mp4"
    assert main(["reenact", str(avatar_file), "--driver", "demo", "--frames", "12", "--size", "48", "-o", str(video), "-q"]) == 0
    info = probe_video(video)
    assert (info.frames, info.width, info.height) == (12, 48, 48)


def test_main_job_on_the_embedded_default(tmp_path):
    """The README's main job (shorter): astronaut -> avatar (shipped weights, a few fitting steps)
    -> demo video, default pipeline."""
    avatar = tmp_path / "astronaut.safetensors"
    video = tmp_path / "astronaut.mp4"
    args = ["reconstruct", "example:astronaut", "-o", str(avatar), "--weights", "builtin:default", "--fit-steps", "10"]
    assert main([*args, "-q"]) == 0
    assert main(["reenact", str(avatar), "--driver", "demo", "--frames", "8", "-o", str(video), "-q"]) == 0
    info = probe_video(video)
    assert (info.frames, info.width, info.height, info.fps) == (8, 256, 256, 25.0)  # the default renders 256²
    from gshead.io.media import read_video

    frames, _, _ = read_video(video)
    first = next(frames)
    assert 0.15 < float(first.mean()) < 0.85, "the video should show the portrait, not a blank frame"
    from gshead.io.avatar import load_avatar

    assert load_avatar(avatar).config.headmodel.name == "anny-head"  # the default pipeline's head model


def test_reenact_from_a_tracked_sequence_file(avatar_file, tmp_path):
    from gshead.io.avatar import load_avatar
    from gshead.io.motion import demo_motion
    from gshead.io.sequence import TrackedSequence, save_sequence
    from gshead.core.types import Camera

    loaded = load_avatar(avatar_file)
    params = demo_motion(loaded.head_model, 8)
    seq = TrackedSequence(params, Camera.frontal(1.0, 18.0, 64, 64, 8), __import__("torch").ones(8, dtype=bool), 25.0, "procedural")
    seq_file = tmp_path / "motion.safetensors"
    save_sequence(seq_file, seq)
    video = tmp_path / "from_seq.mp4"
    assert main(["reenact", str(avatar_file), "--driver", str(seq_file), "-o", str(video), "-q"]) == 0
    assert probe_video(video).frames == 8


def test_reenact_driven_by_a_video_needs_a_tracker_that_fits_motion(avatar_file, tmp_path):
    from gshead.io.media import VideoWriter
    from gshead.testing import sample_image

    clip = tmp_path / "driver.mp4"
    with VideoWriter(clip, fps=10, width=64, height=64) as video:
        for i in range(5):
            video.write(sample_image(64, seed=i))
    out = tmp_path / "driven.mp4"
    # the avatar's tracker (frontal) fits no motion: refused in one line, nothing written; the
    # video path with a landmark tracker is tested in tests/commands/test_reenact.py and test_track.py
    assert main(["reenact", str(avatar_file), "--driver", str(clip), "--size", "32", "-o", str(out), "-q"]) == 2
    assert not out.exists()


@pytest.mark.parametrize(
    "setup, pattern",
    [
        (lambda d: ["reconstruct", str(d / "missing.png")], "missing.png: no such file"),
        (lambda d: ["reconstruct", str(_write(d / "corrupt.png", b"\x89PNG\r\n\x1a\n garbage"))], "corrupt.png: not a readable image"),
        (lambda d: ["reconstruct", "example:astronaut", "--pipeline", str(_yaml(d, encoder={"name": "dinov9"}))], "encoder.name: unknown encoder 'dinov9'"),
        (lambda d: ["reconstruct", "example:astronaut", "--pipeline", str(_yaml(d, lifter={"name": "single-plane", "resolutoin": 8}))], "lifter.resolutoin: unknown field for lifter 'single-plane'"),
        (lambda d: ["reconstruct", "example:astronaut", "--pipeline", str(_yaml(d, render_size="big"))], "render_size: Input should be a valid integer"),
    ],
    ids=["missing-image", "corrupt-image", "unknown-plugin", "misspelt-field", "wrong-type"],
)
def test_bad_reconstruct_inputs_give_one_line_and_no_output(setup, pattern, tmp_path, capsys):
    out = tmp_path / "out" / "avatar.safetensors"
    out.parent.mkdir()
    assert main([*setup(tmp_path), "-o", str(out), "-q"]) == 2
    assert pattern in _error_line(capsys)
    assert list(out.parent.iterdir()) == []


def test_truncated_avatar_gives_one_line_and_no_video(avatar_file, tmp_path, capsys):
    short = _write(tmp_path / "short.safetensors", avatar_file.read_bytes()[:1000])
    video = tmp_path / "out.mp4"
    assert main(["reenact", str(short), "--driver", "demo", "-o", str(video), "-q"]) == 2
    assert "truncated or corrupt" in _error_line(capsys)
    assert not video.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["short.safetensors"]


def test_bad_driver_argument(avatar_file, tmp_path, capsys):
    assert main(["reenact", str(avatar_file), "--driver", "wobble", "-o", str(tmp_path / "x.mp4"), "-q"]) == 2
    line = _error_line(capsys)
    assert "--driver 'wobble': expected 'demo', a tracked-sequence .safetensors file, a video" in line
    assert "ARKit curves (.csv, .json)" in line and "GAGAvatar_track output (.pkl, .pt)" in line
    assert main(["reenact", str(avatar_file), "--driver", "demo", "--frames", "2", "-o", str(tmp_path / "x.mp4"), "-q"]) == 2
    assert "at least 4 frames" in _error_line(capsys)
    assert not (tmp_path / "x.mp4").exists()


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _yaml(d, **slots):
    path = d / "pipeline.yaml"
    path.write_text(yaml.safe_dump(tiny_pipeline(**slots)), encoding="utf-8")
    return path


def test_main_restores_the_callers_grad_mode(avatar_file, tmp_path):
    import torch

    assert torch.is_grad_enabled()
    out = tmp_path / "clip.mp4"
    assert main(["reenact", str(avatar_file), "--driver", "demo", "--frames", "4", "-o", str(out), "-q"]) == 0
    assert torch.is_grad_enabled(), "a command left autograd switched off in the calling process"
