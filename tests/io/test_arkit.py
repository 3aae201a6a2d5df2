"""``gshead.io.arkit``: Live Link Face CSV and ARKit-named JSON in, Live Link CSV out, and the
``reenact --driver FILE.csv`` / ``track --format arkit-csv`` round trip."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from gshead.cli import main
from gshead.commands.headmodel import build_head_model
from gshead.core.errors import InputError
from gshead.io.arkit import (
    ANGLE_NAMES,
    ARKIT_NAMES,
    arkit_params,
    euler_to_rotvec,
    read_arkit,
    rotvec_to_euler,
    write_arkit_csv,
)
from gshead.testing import tiny_pipeline


@pytest.fixture(scope="module")
def procedural():
    return build_head_model("procedural")  # 15 ARKit-named expressions


def _live_link_csv(path, rows: list[dict[str, float]]):
    header = ["Timecode", "BlendShapeCount", *(n[0].upper() + n[1:] for n in ARKIT_NAMES), *ANGLE_NAMES]
    lines = [",".join(header)]
    for i, row in enumerate(rows):
        values = [row.get(h, 0.0) for h in header[2:]]
        lines.append(",".join([f"12:00:00:{i:02d}.123", "61", *map(str, values)]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_arkit_names_are_anny_heads_expressions():
    anny = build_head_model("anny-head")
    assert sorted(ARKIT_NAMES) == sorted(anny.expression_names) and len(set(ARKIT_NAMES)) == 52


def test_live_link_csv_maps_case_insensitively(tmp_path, procedural):
    path = _live_link_csv(
        tmp_path / "take.csv", [{"JawOpen": 0.7, "EyeBlinkLeft": 1.0, "TongueOut": 0.5}, {}]
    )
    curves = read_arkit(path)
    assert len(curves.values) == 2 and "jawOpen" in curves.names and "HeadYaw" in curves.names
    params, ignored = arkit_params(curves, procedural)
    names = procedural.expression_names
    assert params.batch_size == 2
    assert math.isclose(float(params.expression[0, names.index("jawOpen")]), 0.7, rel_tol=1e-6)
    assert float(params.expression[0, names.index("eyeBlinkLeft")]) == 1.0
    assert float(params.expression[1].abs().max()) == 0.0
    assert "tongueOut" in ignored and "jawOpen" not in ignored  # procedural has no tongueOut
    assert float(params.jaw.abs().max()) == 0.0  # JawOpen drives the expression, not the jaw joint


@pytest.mark.parametrize(
    "column, axis, probe, expect",
    [
        ("HeadYaw", 1, 2, (0, +1.0)),  # face (+z) turns towards +x, the subject's left
        ("HeadPitch", 0, 2, (1, -1.0)),  # face nods down (-y)
        ("HeadRoll", 2, 1, (0, -1.0)),  # top of the head (+y) tilts to -x, the subject's right
    ],
)
def test_head_angle_signs(tmp_path, procedural, column, axis, probe, expect):
    import roma

    path = _live_link_csv(tmp_path / "a.csv", [{column: 0.3}])
    params, _ = arkit_params(read_arkit(path), procedural)
    want = torch.zeros(3)
    want[axis] = 0.3
    assert torch.allclose(params.rotation[0], want, atol=1e-6)
    moved = roma.rotvec_to_rotmat(params.rotation[0].double()) @ torch.eye(3, dtype=torch.float64)[probe]
    component, sign = expect
    assert sign * float(moved[component]) > 0.25


def test_euler_round_trip_and_eyes(tmp_path, procedural):
    rng = np.random.default_rng(0)
    angles = rng.uniform(-0.6, 0.6, size=(20, 3))
    back = rotvec_to_euler(euler_to_rotvec(*angles.T))
    assert np.allclose(back, angles, atol=1e-9)
    path = _live_link_csv(tmp_path / "e.csv", [{"LeftEyeYaw": 0.2, "RightEyePitch": -0.1}])
    params, _ = arkit_params(read_arkit(path), procedural)
    assert torch.allclose(params.eyes[0], torch.tensor([0, 0.2, 0, -0.1, 0, 0]), atol=1e-6)


@pytest.mark.parametrize("layout", ["names", "audio2face"])
def test_json_layouts(tmp_path, procedural, layout):
    names, weights = ["jawOpen", "MouthSmileLeft", "HeadYaw"], [[0.5, 0.25, 0.1], [0.0, 1.0, 0.0]]
    if layout == "names":
        data = {"names": names, "weights": weights, "fps": 30}
    else:
        data = {"exportFps": 60, "trackPath": "/World/x", "numPoses": 3, "numFrames": 2,
                "facsNames": names, "weightMat": weights}  # fmt: skip
    path = tmp_path / "c.json"
    path.write_text(json.dumps(data))
    curves = read_arkit(path)
    assert curves.fps == (30 if layout == "names" else 60)
    params, ignored = arkit_params(curves, procedural)
    i = procedural.expression_names.index("mouthSmileLeft")
    assert ignored == [] and float(params.expression[1, i]) == 1.0
    assert math.isclose(float(params.rotation[0, 1]), 0.1, rel_tol=1e-6)


def test_bad_files_are_one_line_errors(tmp_path, procedural):
    cases = {
        "unknown.csv": "Timecode,EyeBlinkLeft,Smile\n0,0.1,0.2\n",
        "short.csv": "Timecode,EyeBlinkLeft,JawOpen\n0,0.1\n",
        "text.csv": "EyeBlinkLeft\nabc\n",
        "nan.csv": "EyeBlinkLeft\nnan\n",
        "empty.csv": "EyeBlinkLeft\n",
        "shape.json": json.dumps({"names": ["jawOpen"], "weights": [[0.1, 0.2]]}),
        "keys.json": json.dumps({"blendshapes": []}),
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(InputError) as info:
            read_arkit(tmp_path / name)
        assert "\n" not in str(info.value), name
    with pytest.raises(InputError, match="'Smile'"):
        read_arkit(tmp_path / "unknown.csv")


def test_head_model_without_arkit_names_refuses_in_one_line(tmp_path):
    class Plain:
        expression_names = ("e0", "e1", "e2")

    path = _live_link_csv(tmp_path / "t.csv", [{}])
    with pytest.raises(InputError, match="no ARKit-named expressions") as info:
        arkit_params(read_arkit(path), Plain(), model_name="plain")
    assert "\n" not in str(info.value) and "'plain'" in str(info.value)


def test_write_then_read_round_trips(tmp_path, procedural):
    g = torch.Generator().manual_seed(0)
    params = procedural.neutral(5)
    params = params.replace(
        expression=torch.rand(5, params.expression.shape[1], generator=g),
        rotation=(torch.rand(5, 3, generator=g) - 0.5) * 0.8,
        eyes=(torch.rand(5, 6, generator=g) - 0.5) * 0.4,
    )
    path = write_arkit_csv(tmp_path / "out.csv", params, procedural, fps=25)
    header = path.read_text().splitlines()[0].split(",")
    assert header[:4] == ["Timecode", "BlendShapeCount", "EyeBlinkLeft", "EyeLookDownLeft"]
    assert len(header) == 2 + 52 + 9
    back, ignored = arkit_params(read_arkit(path), procedural)
    assert set(ignored) == set(ARKIT_NAMES) - set(procedural.expression_names)
    for name in ("expression", "rotation", "eyes"):
        assert torch.allclose(getattr(back, name), getattr(params, name), atol=1e-5), name


# ------------------------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arkit")
    cfg = folder / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_pipeline()), encoding="utf-8")
    avatar = folder / "a.safetensors"
    assert main(["reconstruct", "example:astronaut", "-o", str(avatar), "--pipeline", str(cfg), "-q"]) == 0
    return folder, cfg, avatar


def test_track_to_csv_to_reenact(setup, tmp_path, monkeypatch, capsys):
    from gshead.io.sequence import load_sequence

    monkeypatch.setenv("GSHEAD_CACHE_DIR", str(tmp_path / "cache"))
    _folder, cfg, avatar = setup
    seq_path, csv_path, png = tmp_path / "s.safetensors", tmp_path / "s.csv", tmp_path / "out.png"
    common = ["track", "example:astronaut", "--pipeline", str(cfg), "-q"]
    assert main([*common, "-o", str(seq_path)]) == 0
    assert main([*common, "-o", str(csv_path), "--format", "arkit-csv"]) == 0
    seq = load_sequence(seq_path)
    back, _ = arkit_params(read_arkit(csv_path), build_head_model("procedural"))
    assert torch.allclose(back.expression, seq.params.expression, atol=1e-5)
    assert torch.allclose(back.rotation, seq.params.rotation, atol=1e-5)
    capsys.readouterr()
    assert main(["reenact", str(avatar), "--driver", str(csv_path), "-o", str(png), "-q"]) == 0
    err = capsys.readouterr().err
    assert "wrote" in err and "1 frames" in err and "lacks 37 of the file's curves" in err
    assert main([*common, "-o", str(tmp_path / "x.safetensors"), "--format", "arkit-csv"]) == 2
    assert ".csv" in capsys.readouterr().err


def test_reenact_refuses_a_bad_curves_file_in_one_line(setup, tmp_path, capsys):
    _folder, _cfg, avatar = setup
    bad = tmp_path / "bad.csv"
    bad.write_text("Timecode,Smile\n0,1\n")
    assert main(["reenact", str(avatar), "--driver", str(bad), "-o", str(tmp_path / "o.png"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'Smile'" in err[0]
    assert not (tmp_path / "o.png").exists()
