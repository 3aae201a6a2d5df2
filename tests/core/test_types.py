"""The typed frozen containers: shape checks name the field, helpers never modify in place."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from gshead.core.errors import ShapeError
from gshead.core.geometry import project_points
from gshead.core.types import Camera, CropBox, Gaussians, HeadParams


def _gaussians(b: int = 1, n: int = 5, c: int = 4) -> Gaussians:
    quats = torch.nn.functional.normalize(torch.randn(b, n, 4), dim=-1)
    return Gaussians(torch.randn(b, n, 3), quats, torch.rand(b, n, 3) + 0.1, torch.rand(b, n), torch.rand(b, n, c))


def test_gaussians_shape_errors_name_the_field_and_the_expected_shape():
    g = _gaussians()
    with pytest.raises(ShapeError, match=r"Gaussians.quats: expected shape \[1, 5, 4\], got \[1, 5, 3\]"):
        Gaussians(g.means, g.quats[..., :3], g.scales, g.opacities, g.features)
    with pytest.raises(ShapeError, match=r"Gaussians.means: expected a tensor, got list"):
        Gaussians([0.0], g.quats, g.scales, g.opacities, g.features)  # type: ignore[arg-type]


def test_gaussians_are_frozen_and_replace_copies():
    g = _gaussians()
    with pytest.raises(dataclasses.FrozenInstanceError):
        g.means = g.means  # type: ignore[misc]
    moved = g.replace(means=g.means + 1)
    assert torch.equal(moved.means, g.means + 1) and moved.quats is g.quats


def test_cat_broadcasts_a_batch_of_one_and_expand_refuses_other_batches():
    one, three = _gaussians(1, 5), _gaussians(3, 2)
    both = Gaussians.cat([one, three])
    assert (both.batch_size, both.count, both.channels) == (3, 7, 4)
    assert torch.equal(both.means[2, :5], one.means[0])
    with pytest.raises(ShapeError, match="cannot expand batch 3 to 4"):
        three.expand(4)


def test_flat_tensor_view_recurses_and_to_keeps_values():
    g = _gaussians(2, 3)
    flat = g.tensors("static.")
    assert set(flat) == {f"static.{k}" for k in ("means", "quats", "scales", "opacities", "features")}
    assert torch.equal(g.to("cpu").features, g.features)


def test_camera_resize_and_motion():
    cam = Camera.frontal(1.0, 30.0, 64, 48)
    half = cam.resized(32, 24)
    point = torch.tensor([[[0.05, -0.02, 0.1]]])
    assert torch.allclose(project_points(point, half), project_points(point, cam) / 2, atol=1e-5)
    # The centre of the world projects to the image centre; moving the scene moves its image.
    assert torch.allclose(project_points(torch.zeros(1, 1, 3), cam), torch.tensor([[[32.0, 24.0]]]))
    shift = torch.eye(4)[None].clone()
    shift[0, 0, 3] = 0.1  # +x in the world is image right for this camera
    assert project_points(torch.zeros(1, 1, 3), cam.moved(shift))[0, 0, 0] > 32.0
    with pytest.raises(ShapeError, match="image size must be positive"):
        Camera(cam.world_to_camera, cam.intrinsics, 0, 10)


def test_head_params_select_and_pose_matrix():
    p = HeadParams.zeros(4, 7, batch_size=5)
    p = p.replace(rotation=torch.tensor([[0.0, math.pi / 2, 0.0]]).repeat(5, 1), translation=torch.ones(5, 3))
    assert p.select(2).batch_size == 1 and p.select(slice(1, 4)).batch_size == 3
    m = p.pose_matrix()
    assert m.shape == (5, 4, 4)
    assert torch.allclose(m[0, :3, :3] @ torch.tensor([1.0, 0, 0]), torch.tensor([0.0, 0, -1]), atol=1e-6)
    assert torch.equal(m[0, :3, 3], torch.ones(3))
    with pytest.raises(ShapeError, match=r"HeadParams.jaw: expected shape \[5, 3\]"):
        p.replace(jaw=torch.zeros(4, 3))


def test_centred_crop_box_is_the_largest_centred_square():
    box = CropBox.centred(200, 100)
    assert (box.left, box.top, box.side) == (50, 0, 100)
