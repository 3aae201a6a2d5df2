"""``gshead.jobs.layers``: the background as a layer of Gaussians (``gshead export --layers all``).
The picture in real viewers: ``tests/test_third_party_viewers.py::test_layers_all_shows_the_background``."""

from __future__ import annotations

import json

import pytest
import torch

from gshead.cli import main
from gshead.core.errors import InputError
from gshead.core.types import Camera, Gaussians
from gshead.jobs.layers import (
    BACKGROUND_DEPTH_MARGIN,
    BACKGROUND_GRID,
    BACKGROUND_OPACITY,
    background_depth,
    background_layer,
    with_layers,
)


def _head(n: int = 200, channels: int = 4) -> Gaussians:
    """A ball of Gaussians 0.1 across at the origin."""
    g = torch.Generator().manual_seed(0)
    return Gaussians(
        means=(torch.rand(1, n, 3, generator=g) - 0.5) * 0.1,
        quats=torch.nn.functional.normalize(torch.randn(1, n, 4, generator=g), dim=-1),
        scales=torch.full((1, n, 3), 0.005),
        opacities=torch.full((1, n), 0.9),
        features=torch.rand(1, n, channels, generator=g),
    )


def _camera(size: int = 64) -> Camera:
    """A frontal camera 1 unit away, turned a little about y, so the plane is not axis-aligned."""
    import roma

    camera = Camera.frontal(1.0, 30.0, size, size)
    turn = torch.eye(4)
    turn[:3, :3] = roma.rotvec_to_rotmat(torch.tensor([0.0, 0.3, 0.1]))
    return camera.moved(turn[None])


def _project(points: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    w2c, k = camera.world_to_camera[0], camera.intrinsics[0]
    cam = points @ w2c[:3, :3].T + w2c[:3, 3]  # [N, 3]
    uv = cam[:, :2] / cam[:, 2:] @ k[:2, :2].T + k[:2, 2]
    return uv, cam[:, 2]


def test_layer_is_a_finite_grid_behind_the_head_covering_the_view():
    head, camera = _head(), _camera()
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    background = torch.stack([xx, yy, xx * yy, torch.sin(3 * xx)])[None]  # [1, 4, 64, 64], smooth
    layer = background_layer(background, camera, head, grid=32)
    assert layer.count == 32 * 32 and layer.channels == 4
    for name, t in layer.tensors().items():
        assert torch.isfinite(t).all(), name
    assert (layer.opacities == BACKGROUND_OPACITY).all() and (layer.scales > 0).all()
    uv, depth = _project(layer.means[0], camera)
    _, head_depth = _project(head.means[0], camera)
    assert torch.allclose(
        depth, torch.full_like(depth, head_depth.max() * (1 + BACKGROUND_DEPTH_MARGIN)), atol=1e-5
    )
    assert depth.min() > head_depth.max()  # behind the whole head
    cell = 64 / 32  # lattice cells centred on the pixels of the downsampled background, row-major
    expected = (
        torch.stack(torch.meshgrid(torch.arange(32), torch.arange(32), indexing="xy"), -1) + 0.5
    ) * cell
    assert torch.allclose(uv, expected.reshape(-1, 2).float(), atol=1e-3)
    # flat, facing the camera: the smallest axis of every Gaussian is the view direction
    from gshead.core.geometry import quat_to_rotmat

    normal = quat_to_rotmat(layer.quats[0])[:, :, 2]  # [N, 3] local z in the world
    view = camera.world_to_camera[0, 2, :3]
    assert torch.allclose((normal @ view).abs(), torch.ones(layer.count), atol=1e-5)
    assert (layer.scales[0, :, 2] < 0.5 * layer.scales[0, :, :2].min(-1).values).all()
    # features: the background averaged over each cell, all channels
    pooled = torch.nn.functional.avg_pool2d(background, 2)[0].permute(1, 2, 0).reshape(-1, 4)
    assert torch.allclose(layer.features[0], pooled, atol=0.02)


def test_layer_fills_gsheads_view_with_the_background():
    """From the camera the layer alone renders as the background image (the composite's)."""
    from gshead.core.pipeline import Pipeline
    from gshead.core.registry import get_registry
    from gshead.testing import tiny_pipeline

    head, camera = _head(channels=3), _camera(32)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    background = torch.stack([xx, yy, 0.5 * torch.ones_like(xx)])[None]  # smooth gradients
    layer = background_layer(background, camera, head)
    assert layer.count == 32 * 32  # never finer than the image
    rasterizer = Pipeline.from_dict(tiny_pipeline(), get_registry()).rasterizer  # the torch reference
    with torch.no_grad():
        render = rasterizer(layer, camera, torch.zeros(3))
    assert render.alpha[0, 0].min() > 0.99  # no gaps, to the image's edges and corners
    error = (render.features[0, :, 2:-2, 2:-2] - background[0, :, 2:-2, 2:-2]).abs().mean()
    assert error < 0.02, error


def test_with_layers_head_all_and_no_background():
    head, camera = _head(), _camera()
    same, note = with_layers(head, "head", torch.rand(1, 4, 16, 16), camera)
    assert same is head and note is None
    both, note = with_layers(head, "all", torch.rand(1, 4, 16, 16), camera)
    assert note is None and both.count == head.count + 16 * 16
    assert torch.equal(both.means[:, : head.count], head.means)
    alone, note = with_layers(head, "all", None, camera)
    assert alone is head and "no separate background" in note
    with pytest.raises(InputError, match="--layers"):
        with_layers(head, "torso", None, camera)
    with pytest.raises(InputError, match="channels"):
        with_layers(head, "all", torch.rand(1, 3, 16, 16), camera)
    backwards = -camera.world_to_camera[0, 2, :3]  # against the view
    behind = head.replace(means=head.means + 5.0 * backwards)  # all behind the camera
    with pytest.raises(InputError, match="in front of the source camera"):
        background_depth(camera, behind)


def test_export_layers_all_without_a_background_notes_it(tiny_avatar_file, tmp_path, capsys):
    from gshead.io.avatar import load_avatar

    assert load_avatar(tiny_avatar_file).avatar.background is None  # the tiny pipeline: background lifted
    counts = {}
    for layers in ("head", "all"):
        out = tmp_path / f"{layers}.ply"
        assert main(["export", str(tiny_avatar_file), "-o", str(out), "--layers", layers, "--json"]) == 0
        captured = capsys.readouterr()
        summary = json.loads(captured.out)
        assert summary["layers"] == layers
        counts[layers] = summary["gaussians"]
        notes = [line for line in captured.err.splitlines() if line.startswith("note:")]
        assert len(notes) == (1 if layers == "all" else 0), captured.err
    assert counts["all"] == counts["head"]
    assert BACKGROUND_GRID == 128  # the documented default (docs/exports.md, --help)


def test_export_layers_all_is_refused_with_driver(tiny_avatar_file, tmp_path, capsys):
    code = main(
        ["export", str(tiny_avatar_file), "--driver", "demo", "-o", str(tmp_path / "anim"), "--layers", "all"]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("gshead: error: --layers all:"), err
    assert not (tmp_path / "anim").exists()
