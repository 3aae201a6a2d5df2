"""``gshead export``, its posing maths (``gshead.jobs.posing``) and the 3DGS PLY writer/reader
(``gshead.io.ply``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import yaml

from gshead.cli import main
from gshead.commands.export import export_params
from gshead.core.errors import InputError
from gshead.core.geometry import quat_multiply
from gshead.io.ply import SH_C0, property_names, read_ply, read_ply_table, write_ply
from gshead.core.types import Gaussians, HeadParams
from gshead.jobs.posing import export_gaussians, posed_in_world
from gshead.testing import tiny_pipeline


def _gaussians(n: int = 50, channels: int = 5, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(1, n, 3, generator=g) * 0.1,
        quats=torch.nn.functional.normalize(torch.randn(1, n, 4, generator=g), dim=-1),
        scales=0.001 + 0.02 * torch.rand(1, n, 3, generator=g),
        opacities=0.01 + 0.98 * torch.rand(1, n, generator=g),
        features=torch.rand(1, n, channels, generator=g),
    )


@pytest.fixture(scope="module")
def avatar_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    cfg = folder / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_pipeline()), encoding="utf-8")
    out = folder / "a.safetensors"
    assert main(["reconstruct", "example:astronaut", "-o", str(out), "--pipeline", str(cfg), "-q"]) == 0
    return out


# ------------------------------------------------------------------------------- PLY format
@pytest.mark.parametrize("sh_degree", [0, 3])
def test_ply_round_trip_with_our_reader(tmp_path, sh_degree):
    g = _gaussians()
    path = write_ply(tmp_path / "g.ply", g, sh_degree=sh_degree)
    back = read_ply(path)
    assert back.count == g.count and back.channels == 3
    for name in ("means", "quats", "scales", "opacities"):
        assert torch.allclose(getattr(back, name), getattr(g, name), atol=1e-5, rtol=1e-5), name
    assert torch.allclose(back.features, g.features[..., :3], atol=1e-5)
    names = list(read_ply_table(path).dtype.names)
    assert names == property_names(sh_degree)
    assert sum(n.startswith("f_rest_") for n in names) == (45 if sh_degree == 3 else 0)


def test_ply_is_readable_by_plyfile_with_the_standard_encoding(tmp_path):
    plyfile = pytest.importorskip("plyfile")
    g = _gaussians(n=7)
    path = write_ply(tmp_path / "g.ply", g)
    ply = plyfile.PlyData.read(str(path))
    v = ply["vertex"]
    assert ply.text is False and ply.byte_order == "<" and len(v.data) == 7
    f64 = lambda name: np.asarray(v[name], dtype=np.float64)
    x = g.means[0, :, 0].double().numpy()
    assert np.allclose(f64("x"), x, atol=1e-6)
    rgb = g.features[0, :, :3].double().numpy()
    assert np.allclose(0.5 + SH_C0 * f64("f_dc_1"), rgb[:, 1], atol=1e-5)
    op = g.opacities[0].double().numpy()
    assert np.allclose(f64("opacity"), np.log(op / (1 - op)), atol=1e-4)  # logit
    assert np.allclose(f64("scale_2"), np.log(g.scales[0, :, 2].double().numpy()), atol=1e-5)  # log
    assert np.allclose(f64("rot_0"), g.quats[0, :, 0].double().numpy(), atol=1e-6)  # w first
    assert np.all(f64("nx") == 0) and np.all(f64("f_rest_44") == 0)


def test_extreme_opacities_stay_finite(tmp_path):
    g = _gaussians(n=2)
    g = g.replace(opacities=torch.tensor([[0.0, 1.0]]))
    back = read_ply(write_ply(tmp_path / "g.ply", g))
    assert torch.isfinite(back.opacities).all()
    assert torch.allclose(back.opacities, g.opacities, atol=1e-5)


def test_reader_rejects_foreign_and_truncated_files(tmp_path):
    bad = tmp_path / "bad.ply"
    bad.write_text("hello\n")
    with pytest.raises(InputError, match="not a PLY file"):
        read_ply(bad)
    good = write_ply(tmp_path / "g.ply", _gaussians(n=10))
    cut = tmp_path / "cut.ply"
    cut.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(InputError, match="truncated"):
        read_ply(cut)
    ascii_ply = tmp_path / "a.ply"
    ascii_ply.write_text("ply\nformat ascii 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(InputError, match="binary_little_endian"):
        read_ply(ascii_ply)


def test_write_is_atomic_on_failure(tmp_path):
    target = tmp_path / "g.ply"
    target.write_bytes(b"old")
    with pytest.raises(InputError):
        write_ply(target, _gaussians(channels=2))  # fewer than 3 channels
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["g.ply"]


# ------------------------------------------------------------------------------- pose maths
def test_pose_moves_gaussians_like_the_camera_would():
    """R x + t for means; the rotation of the composed quaternion equals R @ R_q."""
    import roma

    g = _gaussians(n=6)
    params = HeadParams.zeros(1, 1).replace(
        rotation=torch.tensor([[0.1, 0.4, -0.2]]), translation=torch.tensor([[0.01, -0.02, 0.03]])
    )
    moved = posed_in_world(g, params)
    r = roma.rotvec_to_rotmat(params.rotation)[0]
    assert torch.allclose(moved.means[0], g.means[0] @ r.T + params.translation, atol=1e-6)
    to_mat = lambda q: roma.unitquat_to_rotmat(torch.cat([q[..., 1:], q[..., :1]], -1))
    assert torch.allclose(to_mat(moved.quats[0]), r @ to_mat(g.quats[0]), atol=1e-5)
    identity = torch.tensor([1.0, 0, 0, 0])
    assert torch.allclose(quat_multiply(identity, g.quats), g.quats)


# ------------------------------------------------------------------------------- the command
def test_export_command_round_trips_the_avatar(avatar_file, tmp_path, capsys):
    from gshead.io.avatar import load_avatar

    out = tmp_path / "head.ply"
    assert main(["export", str(avatar_file), "-o", str(out), "--up", "y"]) == 0
    assert "Gaussians" in capsys.readouterr().err
    loaded = load_avatar(avatar_file)
    expected = export_gaussians(loaded, export_params(loaded))
    back = read_ply(out)
    assert back.count == loaded.avatar.static.count + loaded.avatar.rig.dynamic.count
    assert torch.allclose(back.means, expected.means, atol=1e-5)
    assert torch.allclose(back.scales, expected.scales, rtol=1e-4)
    assert torch.allclose(back.features, expected.features[..., :3], atol=1e-5)
    # static Gaussians are written unchanged at a neutral pose
    ns = loaded.avatar.static.count
    assert torch.allclose(back.means[:, :ns], loaded.avatar.static.means, atol=1e-6)


def test_expression_moves_only_driven_gaussians(avatar_file, tmp_path):
    neutral, smiling = tmp_path / "n.ply", tmp_path / "s.ply"
    assert main(["export", str(avatar_file), "-o", str(neutral), "--sh-degree", "0"]) == 0
    args = [
        "--expression",
        "jawOpen=1",
        "--expression",
        "mouthSmileLeft=1",
        "--jaw",
        "0.3",
        "--sh-degree",
        "0",
    ]
    assert main(["export", str(avatar_file), "-o", str(smiling), *args]) == 0
    a, b = read_ply(neutral), read_ply(smiling)
    from gshead.io.avatar import load_avatar

    ns = load_avatar(avatar_file).avatar.static.count
    assert torch.equal(a.means[:, :ns], b.means[:, :ns])  # static part does not move
    moved = (a.means[0, ns:] - b.means[0, ns:]).norm(dim=-1)
    assert moved.max() > 1e-3  # the mouth moved
    assert (moved < 1e-7).any()  # and the back of the head did not


def test_pose_option_rotates_the_whole_head(avatar_file, tmp_path):
    front, turned = tmp_path / "f.ply", tmp_path / "t.ply"
    assert main(["export", str(avatar_file), "-o", str(front), "--up", "y"]) == 0
    assert main(["export", str(avatar_file), "-o", str(turned), "--up", "y", "--pose", "0", "90", "0"]) == 0
    a, b = read_ply(front), read_ply(turned)
    # a 90 degree yaw about +y maps (x, y, z) to (z, y, -x)
    expected = torch.stack([a.means[..., 2], a.means[..., 1], -a.means[..., 0]], -1)
    assert torch.allclose(b.means, expected, atol=1e-5)
    assert math.isclose(float(b.opacities.sum()), float(a.opacities.sum()), rel_tol=1e-5)


def test_unknown_expression_name_is_one_line_listing_valid_names(avatar_file, tmp_path, capsys):
    out = tmp_path / "x.ply"
    assert main(["export", str(avatar_file), "-o", str(out), "--expression", "smile=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gshead: error: ")
    assert "'smile'" in err[0] and "jawOpen" in err[0] and "mouthSmileLeft" in err[0]
    assert not out.exists()


def test_bad_output_name_and_missing_avatar(avatar_file, tmp_path, capsys):
    assert main(["export", str(avatar_file), "-o", str(tmp_path / "x.obj")]) == 2
    err = capsys.readouterr().err
    assert ".ply" in err and ".splat" in err
    assert main(["export", str(tmp_path / "none.safetensors"), "-o", str(tmp_path / "x.ply")]) == 2
    assert "no such" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------- orientation, scale, camera
def _plyfile_xyz(path) -> np.ndarray:
    plyfile = pytest.importorskip("plyfile")
    v = plyfile.PlyData.read(str(path))["vertex"]
    return np.stack([np.asarray(v[a], dtype=np.float64) for a in "xyz"], -1)


def _project(camera: dict, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates [N, 2] and depths [N] of ``points`` through a ``.camera.json`` camera."""
    w2c = np.asarray(camera["world_to_camera"])
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]
    u = camera["fx"] * cam[:, 0] / cam[:, 2] + camera["cx"]
    v = camera["fy"] * cam[:, 1] / cam[:, 2] + camera["cy"]
    return np.stack([u, v], -1), cam[:, 2]


def test_default_export_is_the_original_3dgs_convention(avatar_file, tmp_path, capsys):
    """Read back with plyfile: the top of the head has the smallest y, the face looks towards -z
    (at a camera looking along +z), and the camera JSON sees the head upright, face first."""
    import json

    from gshead.io.avatar import load_avatar

    default, y_up = tmp_path / "d.ply", tmp_path / "y.ply"
    assert main(["export", str(avatar_file), "-o", str(default), "--sh-degree", "0"]) == 0
    assert "y down" in capsys.readouterr().err
    assert main(["export", str(avatar_file), "-o", str(y_up), "--sh-degree", "0", "--up", "y"]) == 0
    assert (
        main(["export", str(avatar_file), "-o", str(tmp_path / "e.ply"), "--up=-y", "--sh-degree", "0"]) == 0
    )
    assert (tmp_path / "e.ply").read_bytes() == default.read_bytes()
    ns = load_avatar(avatar_file).avatar.static.count
    ours, theirs = _plyfile_xyz(y_up)[ns:], _plyfile_xyz(default)[ns:]  # the Gaussians on the head mesh
    top, nose = int(np.argmax(ours[:, 1])), int(np.argmax(ours[:, 2]))  # gshead: y up, face along +z
    assert int(np.argmin(theirs[:, 1])) == top  # the top of the head: smallest y
    assert int(np.argmin(theirs[:, 2])) == nose  # the face: towards -z
    assert np.allclose(theirs, ours * [1, -1, -1], atol=1e-6)  # 180 degrees about x, no mirror
    camera = json.loads((tmp_path / "d.camera.json").read_text())
    assert camera["up_axis"] == "-y" and camera["width"] > 0 and 0 < camera["fov_y_degrees"] < 90
    forward = np.subtract(camera["target"], camera["position"])
    assert forward[2] > 0 and np.dot(camera["up"], [0, -1, 0]) > 0.9  # looks along +z, image up is -y
    uv, depth = _project(camera, theirs)
    assert (depth > 0).all()
    assert uv[top, 1] < uv[:, 1].mean()  # upright: the top of the head is high in the image
    back = int(np.argmin(ours[:, 2]))
    assert depth[nose] < depth[back]  # the face is towards the camera


def test_camera_json_reproduces_gshead_view_at_any_convention_and_scale(avatar_file, tmp_path):
    """The exported camera sees the exported Gaussians where gshead's camera sees the avatar."""
    import json

    from gshead.core.geometry import project_points, quat_to_rotmat
    from gshead.io.avatar import load_avatar

    loaded = load_avatar(avatar_file)
    expected = export_gaussians(loaded, export_params(loaded))
    want = project_points(expected.means, loaded.avatar.camera)[0].double().numpy()
    reference = None
    for up, scale in (("-y", 1.0), ("y", 1.0), ("-y", 10.0)):
        out = tmp_path / f"h{up}{scale:g}.ply"
        assert main(["export", str(avatar_file), "-o", str(out), f"--up={up}", "--scale", f"{scale:g}"]) == 0
        camera = json.loads(out.with_name(out.stem + ".camera.json").read_text())
        back = read_ply(out)
        uv, _depth = _project(camera, back.means[0].double().numpy())
        assert np.allclose(uv, want, atol=1e-2), (up, scale)
        assert torch.allclose(back.scales, expected.scales * scale, rtol=1e-4)
        # covariance axes turn with the frame: R' = M R
        m = torch.diag(torch.tensor([1.0, 1, 1] if up == "y" else [1.0, -1, -1]))
        assert torch.allclose(quat_to_rotmat(back.quats[0]), m @ quat_to_rotmat(expected.quats[0]), atol=1e-4)
        distance = float(np.linalg.norm(camera["position"]))
        reference = reference or distance
        assert math.isclose(distance, scale * reference, rel_tol=1e-6)


def test_bad_scale_is_one_line(avatar_file, tmp_path, capsys):
    assert main(["export", str(avatar_file), "-o", str(tmp_path / "x.ply"), "--scale", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--scale" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_splat_export_matches_the_ply(avatar_file, tmp_path):
    ply, splat = tmp_path / "h.ply", tmp_path / "h.splat"
    assert main(["export", str(avatar_file), "-o", str(ply)]) == 0
    assert main(["export", str(avatar_file), "-o", str(splat)]) == 0
    assert (tmp_path / "h.camera.json").is_file()
    a = read_ply(ply)
    raw = np.frombuffer(splat.read_bytes(), dtype=[("position", "<f4", 3), ("rest", "V20")])
    assert len(raw) == a.count
    # the same set of positions (the .splat is sorted by size x opacity)
    key = lambda p: np.lexsort(p.T)
    pa, pb = a.means[0].numpy(), raw["position"]
    assert np.allclose(pa[key(pa)], pb[key(pb)], atol=1e-6)
