"""A still torso under a moving head (``torso: still``) and the image layer that gives the head its
hair, neck and shoulders (``mesh-anchored``'s ``image_layer``), issue #17 items 1-3.

The geometry is checked against plain rigid-motion algebra (what a weight-1 point must do), and the
pipeline on a real portrait (scikit-image's astronaut, MediaPipe's tracking and segmentation): a head
turn must move the face and leave the shoulders where they were, and do otherwise with ``torso: head``.
"""

from __future__ import annotations

import math

import pytest
import torch

from gshead.core.geometry import body_weights, project_points, still_body
from gshead.core.types import Gaussians


def _gaussians(n: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(
        means=torch.randn(1, n, 3, generator=g) * 0.1,
        quats=torch.nn.functional.normalize(torch.randn(1, n, 4, generator=g), dim=-1),
        scales=torch.full((1, n, 3), 0.01),
        opacities=torch.full((1, n), 0.9),
        features=torch.rand(1, n, 4, generator=g),
    )


def _rigid(rotvec, translation) -> torch.Tensor:
    import roma

    m = torch.eye(4)
    m[:3, :3] = roma.rotvec_to_rotmat(torch.tensor(rotvec))
    m[:3, 3] = torch.tensor(translation)
    return m[None]


def test_still_body_is_the_relative_motion_at_weight_one_and_nothing_at_zero():
    import roma

    g = _gaussians(6)
    weight = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.5, 0.5]])
    a = _rigid([0.1, -0.4, 0.2], [0.01, 0.02, -0.03])
    out = still_body(g, weight, a)
    x = g.means[0]
    rigid = x @ a[0, :3, :3].T + a[0, :3, 3]
    assert torch.equal(out.means[0, :2], x[:2]) and torch.equal(out.quats[0, :2], g.quats[0, :2])
    assert torch.allclose(out.means[0, 2:4], rigid[2:4], atol=1e-6)
    assert torch.allclose(out.means[0, 4:], 0.5 * (x[4:] + rigid[4:]), atol=1e-6)  # linear blend
    # A weight-1 rotation is the relative rotation composed with the Gaussian's own.
    r_full = roma.unitquat_to_rotmat(torch.cat([out.quats[0, 2:4, 1:], out.quats[0, 2:4, :1]], -1))
    r_own = roma.unitquat_to_rotmat(torch.cat([g.quats[0, 2:4, 1:], g.quats[0, 2:4, :1]], -1))
    assert torch.allclose(r_full, a[0, :3, :3] @ r_own, atol=1e-5)
    assert torch.allclose(out.quats.norm(dim=-1), torch.ones(1, 6), atol=1e-6)
    assert torch.equal(out.scales, g.scales) and torch.equal(out.features, g.features)


def test_body_weights_rise_from_the_chin_down_the_neck():
    landmarks = torch.tensor([[[0.0, -0.1, 0.0], [0.0, 0.1, 0.0], [0.05, 0.0, 0.0]]])  # chin at y = -0.1
    ys = torch.linspace(0.1, -0.3, 41)
    means = torch.stack([torch.zeros_like(ys), ys, torch.zeros_like(ys)], -1)[None]
    w = body_weights(means, landmarks)[0]
    assert torch.all(w[ys >= -0.1] == 0) and torch.all(w[ys <= -0.1 - 0.75 * 0.1] == 1)
    assert torch.all(w[1:] >= w[:-1])  # monotone downwards
    assert 0 < float(w[(ys - (-0.13)).abs().argmin()]) < 1  # a blend over the neck


@pytest.fixture(scope="module")
def turned():
    """The astronaut with a small separated pipeline, torso still and torso with the head, each
    rendered at the source pose and turned 25 degrees (yaw)."""
    pytest.importorskip("mediapipe", reason="tracking and segmentation are mediapipe's")
    pytest.importorskip("anny", reason="the anny-head model")
    from gshead.core.pipeline import Pipeline
    from gshead.io.media import read_image

    out = {}
    for torso in ("still", "head"):
        config = {
            "seed": 0, "feature_channels": 8, "source_size": 128, "render_size": 128,
            "background": "static", "torso": torso,
            "headmodel": {"name": "anny-head", "mediapipe_landmarks": True},
            "encoder": {"name": "tiny-conv", "channels": 8},
            "lifter": {"name": "mesh-anchored", "anchors_per_face": 1, "image_layer": 48},
            "driver": {"name": "light-control", "anchors_per_face": 1},
            "rasterizer": {"name": "auto"}, "refiner": {"name": "identity"},
            "tracker": {"name": "mediapipe", "face_offset": 0.0},
        }  # fmt: skip
        pipe = Pipeline.from_dict(config)
        image = pipe.prepare_image(read_image("example:astronaut"))
        avatar = pipe.reconstruct(image)
        session = pipe.session(avatar)
        yaw = avatar.source.replace(rotation=avatar.source.rotation + torch.tensor([[0.0, math.radians(25), 0.0]]))
        out[torso] = (pipe, avatar, image, session.render(avatar.source), session.render(yaw))
    return out


def test_the_image_layer_lies_outside_the_face_and_behind_its_outline(turned):
    pipe, avatar, _image, _still, _yaw = turned["still"]
    layer = pipe.lifter.image_layer
    assert layer is not None
    view = avatar.camera.moved(avatar.source.pose_matrix())
    vertices = pipe.head_model(avatar.source).vertices
    _depth, outside, _width = layer.depth_prior(view, vertices, pipe.head_model.faces)
    assert 0.2 < float(outside.float().mean()) < 0.95  # the face covers part of the crop, not all of it
    # The last Gaussians of the lifter are the image layer's; they project outside the face.
    anchored = pipe.lifter.count
    lifted = pipe.lifter(pipe.encoder(_image), avatar.source, view)
    extra = lifted.means[:, anchored:]
    assert extra.shape[1] == int(outside.sum())
    uv = project_points(extra, view)[0]
    cell = (uv * layer.resolution / view.width).floor().long().clamp(0, layer.resolution - 1)
    assert bool(outside[0, cell[:, 1] * layer.resolution + cell[:, 0]].all())
    # Nothing of the layer is in front of the face: every point is behind the mesh's nearest point.
    w2c = view.world_to_camera[0]
    z_layer = (extra[0] @ w2c[:3, :3].T + w2c[:3, 3])[:, 2]
    z_mesh = (vertices[0] @ w2c[:3, :3].T + w2c[:3, 3])[:, 2]
    assert float(z_layer.min()) > float(z_mesh.min())
    assert avatar.body is not None and avatar.body.shape == (1, avatar.static.count)
    assert 0 < float((avatar.body > 0.99).float().mean()) < 0.9  # some torso, not all of it


def test_a_head_turn_moves_the_face_and_leaves_the_shoulders(turned):
    """Bottom rows of the crop (the astronaut's suit) against the face box: with ``torso: still``
    the suit stays (much less change than the face); with ``torso: head`` it swings with the head."""
    change = {}
    for torso, (_pipe, _avatar, _image, still, yaw) in turned.items():
        diff = (yaw - still).abs().mean(1)[0]  # [H, W]
        change[torso] = (float(diff[-20:].mean()), float(diff[40:88, 40:88].mean()))
    shoulders_still, face_still = change["still"]
    shoulders_head, _face_head = change["head"]
    assert face_still > 0.03, change  # the face turned
    assert shoulders_still < 0.25 * shoulders_head, change
    assert shoulders_still < 0.3 * face_still, change


def test_the_body_weights_survive_the_avatar_file(turned, tmp_path):
    from gshead.io.avatar import load_avatar, save_avatar

    pipe, avatar, _image, _still, yaw = turned["still"]
    save_avatar(tmp_path / "a.safetensors", avatar, pipe)
    loaded = load_avatar(tmp_path / "a.safetensors")
    assert torch.equal(loaded.avatar.body, avatar.body)
    turned_pose = avatar.source.replace(rotation=avatar.source.rotation + torch.tensor([[0.0, math.radians(25), 0.0]]))
    assert torch.allclose(loaded.session().render(turned_pose), yaw, atol=1e-5)


def test_exports_keep_the_torso_still(turned, tmp_path):
    """The single-frame export and the animated export (``gshead export --driver``) put the torso
    where the source pose put it, whatever the head does: frame i of the animation holds the same
    Gaussians as the single-frame export of frame i (compared as sets: the animation writes the
    torso with the per-frame Gaussians)."""
    from gshead.cli import main
    from gshead.io.animation import read_animation
    from gshead.io.avatar import load_avatar, save_avatar
    from gshead.io.motion import demo_motion
    from gshead.jobs.posing import export_gaussians, to_export_frame

    pipe, avatar, *_ = turned["still"]
    save_avatar(tmp_path / "a.safetensors", avatar, pipe)
    loaded = load_avatar(tmp_path / "a.safetensors")
    out = tmp_path / "anim"
    assert main(["export", str(tmp_path / "a.safetensors"), "--driver", "demo", "--frames", "100", "-o", str(out),
                 "--absolute", "-q"]) == 0  # fmt: skip
    animation = read_animation(out)
    params = demo_motion(loaded.head_model, 100)
    torso = avatar.body[0] == 1.0
    ns = avatar.static.count  # export_gaussians: static first, then the posed dynamic ones
    source_torso = export_gaussians(loaded, avatar.source).means[0, :ns][torso]
    for i in (0, 85, 92):  # frames of the head turn
        frame = params.select(slice(i, i + 1))
        want = to_export_frame(export_gaussians(loaded, frame), "-y", 1.0)
        got = animation.frame(i)
        assert got.count == want.count
        # exact distances: cdist's matrix-product shortcut loses ~1e-4 to cancellation at these sizes
        exact = "donot_use_mm_for_euclid_dist"
        nearest = torch.cat(
            [
                torch.cdist(part, want.means[0], compute_mode=exact).amin(1)
                for part in got.means[0].split(2048)
            ]
        )
        assert float(nearest.max()) < 1e-4  # every Gaussian of the animation is one of the export's
        # the torso did not move in the world (the head did, with the demo's turn)
        world = export_gaussians(loaded, frame).means[0, :ns][torso]
        assert torch.allclose(world, source_torso, atol=1e-4)


def test_layers_head_leaves_the_still_torso_out(turned, tmp_path):
    from gshead.cli import main
    from gshead.io.avatar import save_avatar
    from gshead.io.ply import read_ply
    from gshead.jobs.layers import BACKGROUND_GRID, TORSO_WEIGHT

    pipe, avatar, *_ = turned["still"]
    save_avatar(tmp_path / "a.safetensors", avatar, pipe)
    for layers in ("head", "all"):
        assert main(["export", str(tmp_path / "a.safetensors"), "-o", str(tmp_path / f"{layers}.ply"), "--layers", layers, "-q"]) == 0
    head, both = read_ply(tmp_path / "head.ply"), read_ply(tmp_path / "all.ply")
    torso = int((avatar.body >= TORSO_WEIGHT).sum())
    assert torso > 0
    assert head.count == avatar.static.count - torso + avatar.rig.dynamic.count
    assert both.count == avatar.static.count + avatar.rig.dynamic.count + min(BACKGROUND_GRID, 128) ** 2
