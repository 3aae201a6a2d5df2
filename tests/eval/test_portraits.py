"""``gshead eval portraits``: the landmark measures, the dlib judge on the astronaut, a broken
render scored NOT GOOD, and the command's files and errors (tiny pipeline, a few frames)."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
import yaml

from gshead.cli import main
from gshead.eval import portraits as P
from gshead.testing import tiny_pipeline

pytest.importorskip("torchmetrics")

JUDGE = P.judge_unavailable()
needs_judge = pytest.mark.skipif(JUDGE is not None, reason=f"{JUDGE}")


@pytest.fixture(scope="module")
def judge():
    return P.Judge()


@pytest.fixture(scope="module")
def astronaut():
    from gshead.io.media import read_image

    return P.to_uint8(read_image("example:astronaut"))


def _face_points(gap: float = 0.0, nose_shift: float = 0.0, eye_height: float = 0.3) -> np.ndarray:
    """68 points with the outer eye corners at x = -1 and +1 (inter-ocular distance 2)."""
    p = np.zeros((68, 2))
    for eye, (x0, x1) in ((P.RIGHT_EYE, (-1.0, -0.4)), (P.LEFT_EYE, (0.4, 1.0))):
        xs = np.linspace(x0, x1, 4)
        p[eye[0]], p[eye[3]] = (x0, 0), (x1, 0)
        p[eye[1]], p[eye[2]] = (xs[1], -eye_height / 2), (xs[2], -eye_height / 2)
        p[eye[5]], p[eye[4]] = (xs[1], eye_height / 2), (xs[2], eye_height / 2)
    p[45], p[42] = (1.0, 0), (0.4, 0)  # outer corner of the left eye is 45
    p[P.NOSE_TIP] = (nose_shift, 0.8)
    for top, bottom in P.INNER_LIPS:
        p[top], p[bottom] = (0, 1.5), (0, 1.5 + gap)
    return p


def test_landmark_measures_follow_the_geometry():
    assert P.inter_ocular(_face_points()) == pytest.approx(2.0)
    assert P.mouth_opening(_face_points(gap=0.0)) == pytest.approx(0.0)
    assert P.mouth_opening(_face_points(gap=0.4)) == pytest.approx(0.2)
    assert P.eye_aspect_ratio(_face_points(eye_height=0.3)) == pytest.approx(0.3 / 0.6)
    assert P.eye_aspect_ratio(_face_points(eye_height=0.06)) == pytest.approx(0.1)
    assert P.yaw_degrees(_face_points()) == pytest.approx(0.0)
    right, left = P.yaw_degrees(_face_points(nose_shift=0.3)), P.yaw_degrees(_face_points(nose_shift=-0.3))
    assert right > 10 and left == pytest.approx(-right)  # nose to image right: towards the subject's left


def _rendered(frames: torch.Tensor, orbit: torch.Tensor, crop: torch.Tensor) -> P.Rendered:
    return P.Rendered(
        crop=crop,
        driven=frames,
        orbit=orbit,
        orbit_yaw=np.linspace(-30, 30, orbit.shape[0]),
        fit_psnr=20.0,
        fit_ssim=0.5,
        psnr_before_fit=None,
        frame0_psnr=20.0,
    )


def _commanded(t: int) -> P.Commanded:
    phases = ("talk", "smile", "blink", "turn")
    phase = tuple(phases[min(3, 4 * i // t)] for i in range(t))
    s = np.linspace(0, 1, t)
    return P.Commanded(
        phase=phase,
        jaw=np.where([p == "talk" for p in phase], s, 0.0),
        blink=np.where([p == "blink" for p in phase], 1.0, 0.0),
        yaw=np.where([p == "turn" for p in phase], 20 * s, 0.0),
    )


def test_without_a_judge_its_measures_are_skipped_and_the_rest_computed():
    crop = torch.full((1, 3, 32, 32), 0.5)
    frames = torch.full((8, 3, 32, 32), 0.5)
    result, _ = P.score_portrait(
        "grey", "grey.png", _rendered(frames, frames[:3], crop), _commanded(8), None, None
    )
    for key in ("detection", "identity", "mouth", "blink", "yaw"):
        m = result.measure(key)
        assert m.value is None and m.text == P.SKIPPED and m.good is None
    assert result.measure("frame0").good is True
    assert result.verdict is not True  # never GOOD with targets unmeasured
    assert P.NO_JUDGE in result.notes
    assert "| grey |" in P.markdown_report([result]) and "–" in P.csv_report([result])


@needs_judge
def test_the_judge_finds_the_astronaut_and_she_is_herself(judge, astronaut):
    face = judge.observe(astronaut)
    assert face is not None and face.landmarks.shape == (68, 2) and face.descriptor.shape == (128,)
    left, top, right, bottom = face.box
    assert 150 < left < right < 300 and 50 < top < bottom < 220  # her face, not the flag or the suit
    assert np.linalg.norm(face.descriptor - judge.observe(astronaut.copy()).descriptor) < 1e-6
    assert 0.05 < P.mouth_opening(face.landmarks) < 0.3 and 0.15 < P.eye_aspect_ratio(face.landmarks) < 0.45
    assert judge.observe(np.full((256, 256, 3), 128, np.uint8)) is None


@needs_judge
def test_mouth_opening_rises_when_the_jaw_drops(judge, astronaut):
    from PIL import Image

    left, top, right, bottom = judge.observe(astronaut).box
    side, cx, cy = 2.2 * (right - left), (left + right) / 2, (top + bottom) / 2
    box = tuple(int(v) for v in (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2))
    crop = np.asarray(Image.fromarray(astronaut).crop(box).resize((256, 256), Image.BICUBIC))
    p = judge.observe(crop).landmarks
    y = round(0.5 * (p[62, 1] + p[66, 1]))  # between the lips
    x0, x1 = int(p[3, 0]), int(p[13, 0])  # jaw width
    openings = []
    for drop in (0, 8, 20):  # move the chin down, a dark mouth in the gap
        image = crop.copy()
        image[y + drop :, x0:x1] = crop[y : 256 - drop, x0:x1]
        image[y : y + drop, x0:x1] = (50, 20, 25)
        openings.append(P.mouth_opening(judge.observe(image).landmarks))
    assert openings[1] > openings[0] + 0.05 and openings[2] > openings[1] + 0.03, openings


@needs_judge
def test_a_black_render_scores_no_face_and_not_good(judge, astronaut):
    from gshead.io.media import read_image

    source = judge.observe(astronaut)
    crop = torch.nn.functional.interpolate(read_image("example:astronaut"), size=(64, 64), mode="area")
    black = torch.zeros(8, 3, 64, 64)
    result, faces = P.score_portrait(
        "black", "x", _rendered(black, black[:4], crop), _commanded(8), judge, source
    )
    detection = result.measure("detection")
    assert detection.value == 0.0 and detection.good is False and detection.text.startswith("0%")
    assert result.measure("identity").value == 0.0 and result.measure("identity").good is False
    assert result.measure("mouth").good is False and result.measure("yaw").good is False
    assert result.verdict is False and all(f is None for f in faces["driven"])
    sheet = P.contact_sheet(_rendered(black, black[:4], crop), result, faces)
    assert sheet.ndim == 3 and sheet.shape[2] == 3 and sheet[..., 0].max() == 255  # red frames: no face


@pytest.fixture(scope="module")
def tiny_yaml(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe") / "tiny.yaml"
    # the numba cpu rasterizer: several times faster here than the reference torch-tiles one
    path.write_text(yaml.safe_dump(tiny_pipeline(source_size=64, render_size=48, rasterizer={"name": "cpu"})))
    return path


def test_the_command_writes_tables_and_a_contact_sheet(tmp_path, tiny_yaml, capsys):
    from PIL import Image

    out = tmp_path / "judged"
    argv = ["eval", "portraits", "example:astronaut", "-o", str(out), "--pipeline", str(tiny_yaml)]
    rc = main([*argv, "--frames", "8", "--orbit-frames", "3", "--fit-steps", "1", "-q"])
    assert rc == 0, capsys.readouterr().err
    assert {p.name for p in out.iterdir()} == {"results.md", "results.csv", "results.json", "astronaut.png"}
    data = json.loads((out / "results.json").read_text())
    astro = data["portraits"]["astronaut"]
    assert len(astro["frames"]) == 8 + 3 and data["demo_frames"] == 8 and data["fit_steps"] == 1
    assert astro["measures"]["frame0"]["value"] > 5  # the render resembles the crop at all
    assert astro["verdict"] in ("GOOD", "not", "–")
    if JUDGE is not None:  # no judge installed
        assert astro["measures"]["detection"]["text"] == "–"
    md = (out / "results.md").read_text()
    assert "| astronaut |" in md and "gshead eval portraits example:astronaut" in md
    with Image.open(out / "astronaut.png") as sheet:
        assert sheet.size[0] == P.SHEET_COLUMNS * P.SHEET_TILE and sheet.mode == "RGB"


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("gshead:")]
    assert len(lines) == 1, err
    return lines[0]


def test_bad_portraits_fail_with_one_line_and_write_nothing(tmp_path, tiny_yaml, capsys):
    from PIL import Image

    out = tmp_path / "out"
    rc = main(["eval", "portraits", str(tmp_path / "missing.png"), "-o", str(out), "-q"])
    assert rc == 2 and "no such file" in _one_error_line(capsys.readouterr().err)
    assert not out.exists()
    rc = main(["eval", "portraits", "-o", str(out)])
    assert rc == 2 and "expected at least one portrait" in _one_error_line(capsys.readouterr().err)
    rc = main(["eval", "portraits", "example:astronaut", "-o", str(out), "--frames", "2"])
    assert rc == 2 and "--frames" in _one_error_line(capsys.readouterr().err)
    if JUDGE is not None:  # without a judge, a faceless image is not refused here
        return
    blank = tmp_path / "blank.png"
    Image.new("RGB", (128, 128), (120, 120, 120)).save(blank)
    rc = main(
        ["eval", "portraits", "example:astronaut", str(blank), "-o", str(out), "--pipeline", str(tiny_yaml)]
    )
    assert rc == 2 and "finds no face" in _one_error_line(capsys.readouterr().err)
    assert not out.exists()


def _args(argv):
    from gshead.commands import eval as eval_command

    parser = argparse.ArgumentParser()
    eval_command.add_parser(parser.add_subparsers())
    return parser.parse_args(["eval", *argv])


def test_portraits_mode_and_dataset_mode_are_told_apart(tmp_path, monkeypatch):
    from gshead.commands.eval import _portrait_mode
    from gshead.core.errors import InputError

    monkeypatch.chdir(tmp_path)
    assert _portrait_mode(_args(["portraits", "a.png"]))
    assert not _portrait_mode(_args(["data/synth"]))
    with pytest.raises(InputError, match="unexpected arguments"):
        _portrait_mode(_args(["data/synth", "a.png"]))
    with pytest.raises(InputError, match="at least one portrait"):
        _portrait_mode(_args(["portraits"]))
    (tmp_path / "portraits").mkdir()  # a dataset folder that happens to be called portraits
    assert not _portrait_mode(_args(["portraits"]))
    assert not _portrait_mode(_args(["./portraits"]))
    assert _args(["data/synth"]).output is None  # each mode picks its own default folder


def test_without_the_judge_the_command_still_writes_pixel_measures(tmp_path, tiny_yaml, monkeypatch, capsys):
    monkeypatch.setattr(P, "judge_unavailable", lambda: P.NO_JUDGE)
    out = tmp_path / "nojudge"
    argv = ["eval", "portraits", "example:astronaut", "-o", str(out), "--pipeline", str(tiny_yaml)]
    assert main([*argv, "--frames", "4", "--orbit-frames", "1", "-q"]) == 0
    assert "not installed" in capsys.readouterr().err
    astro = json.loads((out / "results.json").read_text())["portraits"]["astronaut"]
    assert astro["measures"]["detection"]["text"] == "–" and astro["measures"]["mouth"]["good"] is None
    assert astro["measures"]["source_view"]["value"] > 5 and astro["verdict"] == "–"
    assert (out / "astronaut.png").is_file()
