"""Loss functions against simple references; schedule and config checks."""

from __future__ import annotations

import math

import pytest
import torch

from gshead.core.errors import ConfigError
from gshead.core.types import Camera, Render
from gshead.train import losses
from gshead.train.config import LossWeights, ScheduleConfig, validate_train_config
from gshead.train.trainer import lr_factor


def test_l1_matches_reference():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 5, 5, generator=g), torch.rand(2, 3, 5, 5, generator=g)
    ref = sum(abs(x - y) for x, y in zip(a.flatten().tolist(), b.flatten().tolist())) / a.numel()
    assert losses.l1(a, b).item() == pytest.approx(ref, rel=1e-6)


def test_project_points_frontal_camera():
    cam = Camera.frontal(distance=2.0, fov_degrees=30.0, width=40, height=40, batch_size=2)
    f = cam.intrinsics[0, 0, 0].item()
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.1, 0.2, 0.0]], [[0.0, 0.0, 0.5], [-0.1, 0.0, 0.0]]])
    uv = losses.project_points(pts, cam)
    # Origin lands at the principal point; world y up -> image y down; depth = 2 - z.
    assert torch.allclose(uv[0, 0], torch.tensor([20.0, 20.0]))
    assert torch.allclose(uv[0, 1], torch.tensor([20 + f * 0.1 / 2, 20 - f * 0.2 / 2]), atol=1e-4)
    assert torch.allclose(uv[1, 0], torch.tensor([20.0, 20.0]))
    assert torch.allclose(uv[1, 1], torch.tensor([20 - f * 0.1 / 2, 20.0]), atol=1e-4)


def test_face_boxes_square_around_points():
    pts = torch.tensor([[[2.0, 4.0], [6.0, 5.0], [4.0, 8.0]]])  # bbox x 2..6, y 4..8: centre (4, 6), side 4
    box = losses.face_boxes(pts, scale=1.5)
    assert torch.allclose(box, torch.tensor([[1.0, 3.0, 6.0, 6.0]]))
    tiny = losses.face_boxes(torch.zeros(1, 2, 2), scale=1.1, min_side=4.0)
    assert torch.allclose(tiny, torch.tensor([[-2.0, -2.0, 4.0, 4.0]]))


def test_crop_resize_matches_slicing_and_pads_with_zeros():
    img = torch.rand(2, 3, 16, 16)
    whole = losses.crop_resize(img, torch.tensor([[0.0, 0, 16, 16]] * 2), 16)
    assert torch.allclose(whole, img, atol=1e-5)
    sub = losses.crop_resize(img, torch.tensor([[4.0, 2.0, 8.0, 8.0], [0.0, 8.0, 8.0, 8.0]]), 8)
    assert torch.allclose(sub[0], img[0, :, 2:10, 4:12], atol=1e-5)
    assert torch.allclose(sub[1], img[1, :, 8:16, 0:8], atol=1e-5)
    outside = losses.crop_resize(img, torch.tensor([[40.0, 40.0, 4.0, 4.0]] * 2), 4)
    assert outside.abs().max() == 0
    # Differentiable with respect to the image.
    x = img.clone().requires_grad_(True)
    losses.crop_resize(x, torch.tensor([[4.0, 2.0, 8.0, 8.0]] * 2), 8).sum().backward()
    assert x.grad[:, :, 2:10, 4:12].abs().min() > 0 and x.grad[:, :, 12:, :].abs().max() == 0


def test_nearest_squared_distance_matches_cdist():
    g = torch.Generator().manual_seed(1)
    p, s = torch.randn(37, 3, generator=g), torch.randn(11, 3, generator=g)
    ref = torch.cdist(p, s).min(1).values ** 2
    assert torch.allclose(losses.nearest_squared_distance(p, s, chunk=5), ref, atol=1e-5)


def test_point_loss_zero_on_surface_and_subsamples_evenly():
    verts = torch.randn(1, 20, 3)
    assert losses.point_loss(verts[:, :7], verts).item() == pytest.approx(0.0, abs=1e-10)
    means = torch.randn(1, 100, 3)
    index = torch.linspace(0, 99, 10).round().long()
    ref = (torch.cdist(means[0, index], verts[0]).min(1).values ** 2).mean()
    assert losses.point_loss(means, verts, max_points=10).item() == pytest.approx(ref.item(), rel=1e-5)
    m = means.clone().requires_grad_(True)
    losses.point_loss(m, verts).backward()
    assert m.grad.abs().sum() > 0


class _TwoLayer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.b = torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        f1 = torch.relu(self.a(x))
        return (f1, torch.relu(self.b(f1)))


def test_perceptual_loss_matches_reference_and_is_frozen():
    torch.manual_seed(0)
    net = _TwoLayer()
    loss = losses.PerceptualLoss(net)
    x, y = torch.rand(2, 3, 8, 8, requires_grad=True), torch.rand(2, 3, 8, 8)
    fx, fy = net(x), net(y)
    ref = ((fx[0] - fy[0]).abs().mean() + (fx[1] - fy[1]).abs().mean()) / 2
    value = loss(x, y)
    assert torch.allclose(value, ref)
    value.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in net.parameters())
    loss.train()
    assert not net.training
    assert loss(y, y).item() == 0


def _losses_inputs():
    g = torch.Generator().manual_seed(3)
    feats = torch.rand(2, 5, 16, 16, generator=g)
    render = Render(features=feats, alpha=torch.ones(2, 1, 16, 16), depth=torch.ones(2, 1, 16, 16))
    refined = torch.rand(2, 3, 32, 32, generator=g)
    targets = torch.rand(2, 3, 16, 16, generator=g)
    points = torch.tensor([[[4.0, 4.0], [12.0, 10.0]]] * 2)
    means, verts = torch.randn(1, 30, 3, generator=g), torch.randn(1, 9, 3, generator=g)
    return render, refined, targets, points, means, verts


def test_reenactment_losses_terms_and_total():
    render, refined, targets, points, means, verts = _losses_inputs()
    w = LossWeights(l1=1.0, l1_refined=2.0, face_l1=3.0, point=4.0, perceptual=0.0)
    terms = losses.reenactment_losses(render, refined, targets, points, means, verts, w, point_samples=1000)
    assert terms.l1.item() == pytest.approx(losses.l1(render.features[:, :3], targets).item())
    up = torch.nn.functional.interpolate(targets, size=(32, 32), mode="bilinear", align_corners=False)
    assert terms.l1_refined.item() == pytest.approx(losses.l1(refined, up).item(), rel=1e-6)
    box = losses.face_boxes(points, 1.1)
    crop = lambda x, b: losses.crop_resize(x, b, 16)
    ref_face = losses.l1(crop(render.features[:, :3], box), crop(targets, box)) + losses.l1(
        crop(refined, box * 2), crop(up, box * 2)
    )
    assert terms.face_l1.item() == pytest.approx(ref_face.item(), rel=1e-5)
    assert terms.point.item() == pytest.approx(losses.point_loss(means, verts).item(), rel=1e-6)
    assert terms.perceptual.item() == 0
    expected = terms.l1 + 2 * terms.l1_refined + 3 * terms.face_l1 + 4 * terms.point
    assert terms.total(w).item() == pytest.approx(expected.item(), rel=1e-6)
    off = losses.reenactment_losses(
        render, refined, targets, points, means, verts, LossWeights(l1=0, l1_refined=0, face_l1=0, point=0)
    )
    assert all(v.item() == 0 for v in off.as_dict().values())


def test_reenactment_losses_perceptual_term():
    render, refined, targets, points, means, verts = _losses_inputs()
    torch.manual_seed(0)
    perc = losses.PerceptualLoss(_TwoLayer())
    w = LossWeights(perceptual=1.0)
    terms = losses.reenactment_losses(render, refined, targets, points, means, verts, w, perceptual=perc)
    up = losses.match_size(targets, refined)
    box = losses.face_boxes(points, 1.1) * 2
    ref = perc(refined, up) + perc(losses.crop_resize(refined, box, 16), losses.crop_resize(up, box, 16))
    assert terms.perceptual.item() == pytest.approx(ref.item(), rel=1e-5)


def test_lr_schedules():
    warm = ScheduleConfig(kind="cosine", warmup_steps=4, final_lr_ratio=0.1)
    assert [lr_factor(s, warm, 14) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, warm, 14) == pytest.approx(1.0)
    assert lr_factor(13, warm, 14) == pytest.approx(0.1)
    mid = lr_factor(4 + 4.5, warm, 14)  # halfway through the decay
    assert mid == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    lin = ScheduleConfig(kind="linear", final_lr_ratio=0.0)
    assert [lr_factor(s, lin, 3) for s in range(3)] == pytest.approx([1.0, 0.5, 0.0])
    assert lr_factor(100, ScheduleConfig(), 3) == 1.0


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"loss\.l2: unknown field") as err:
        validate_train_config({"loss": {"l2": 1.0}})
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="stage"):
        validate_train_config({"stage": 3})
    with pytest.raises(ConfigError, match="expected a mapping"):
        validate_train_config([1, 2])


def test_stage2_without_weights_refuses(tmp_path):
    from gshead.train.trainer import Trainer

    config = validate_train_config({"stage": 2, "device": "cpu"})
    with pytest.raises(ConfigError, match="stage 2 needs perceptual_weights") as err:
        Trainer(config, tmp_path / "run")
    assert "\n" not in str(err.value)
    missing = validate_train_config({"stage": 2, "perceptual_weights": str(tmp_path / "nope.pth")})
    with pytest.raises(ConfigError, match="no such file"):
        Trainer(missing, tmp_path / "run")
    assert not (tmp_path / "run").exists()
