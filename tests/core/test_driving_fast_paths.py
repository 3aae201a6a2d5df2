"""The per-frame fast paths of driving (issue #17 item 7) against the plain computations they replace.

A driving session keeps what no frame changes (the still torso's split, the resized background, the
driver's per-avatar constants, the head model's identity shape) and renders large outputs at the
pipeline's ``raster_size``. Each shortcut is checked here against the differentiable path that
training uses, or against the library it stands in for (roma's quaternions, PixelUnshuffle), so a
shortcut that changes a frame fails.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import roma
import torch
import torch.nn.functional as F

from gshead.core.components import BuildContext
from gshead.core.geometry import quat_xyzw_to_wxyz, rotmat_to_quat, still_body
from gshead.core.pipeline import Pipeline, drive_frames, raster_camera
from gshead.core.types import Gaussians, Render
from gshead.io.motion import demo_motion
from gshead.plugins.refiners.light_unet import LightUNetConfig, LightUNetRefiner
from gshead.testing import sample_image, tiny_pipeline

HEAD = {"name": "procedural", "subdivisions": 4}


def test_rotmat_to_quat_is_roma_including_half_turns_and_near_identity():
    g = torch.Generator().manual_seed(0)
    half_turns = torch.stack(
        [torch.diag(torch.tensor(d)) for d in ([1.0, -1, -1], [-1.0, 1, -1], [-1.0, -1, 1])]
    )
    tiny = roma.rotvec_to_rotmat(torch.randn(200, 3, generator=g) * 1e-6)
    near_pi = roma.rotvec_to_rotmat(F.normalize(torch.randn(200, 3, generator=g), dim=-1) * (math.pi - 1e-4))
    rotations = torch.cat([roma.random_rotmat(5000), half_turns, tiny, near_pi, torch.eye(3)[None]])
    ours = rotmat_to_quat(rotations)
    theirs = quat_xyzw_to_wxyz(roma.rotmat_to_unitquat(rotations))
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(
        roma.unitquat_to_rotmat(torch.cat([ours[:, 1:], ours[:, :1]], -1)), rotations, atol=1e-5
    )
    batched = rotations[:12].reshape(3, 4, 3, 3)  # any leading shape
    assert torch.allclose(rotmat_to_quat(batched).reshape(12, 4), ours[:12])


def test_still_body_blends_rotations_within_a_tenth_of_a_degree_of_the_spherical_blend():
    n = 11
    gaussians = Gaussians(
        means=torch.zeros(1, n, 3),
        quats=torch.tensor([[1.0, 0, 0, 0]]).expand(1, n, 4),
        scales=torch.full((1, n, 3), 0.01),
        opacities=torch.full((1, n), 0.5),
        features=torch.zeros(1, n, 3),
    )
    weight = torch.linspace(0, 1, n)[None]
    for degrees in (10.0, 25.0, 40.0):
        relative = torch.eye(4)[None].clone()
        rotvec = torch.tensor([0.3, 1.0, -0.2])
        rotvec = rotvec / rotvec.norm() * math.radians(degrees)
        relative[0, :3, :3] = roma.rotvec_to_rotmat(rotvec)
        out = still_body(gaussians, weight, relative).quats[0]  # [n, 4] w, x, y, z
        slerp = quat_xyzw_to_wxyz(roma.rotvec_to_unitquat(weight[0, :, None] * rotvec))
        angle = 2 * torch.acos((out * slerp).sum(-1).abs().clamp(max=1.0))
        assert float(angle.max()) < math.radians(0.1), (degrees, float(angle.max()))
        assert torch.allclose(out[0], torch.tensor([1.0, 0, 0, 0]))  # weight 0: untouched
        assert float(angle[-1]) < 1e-3  # weight 1: the whole relative rotation


@pytest.mark.parametrize("size", [(64, 64), (33, 47)])
def test_light_unet_stem_is_pixel_unshuffle_then_its_1x1_conv(size):
    torch.manual_seed(0)
    net = LightUNetRefiner(LightUNetConfig(widths=(8, 16)), BuildContext(6)).eval()
    for p in net.parameters():
        p.data.normal_(0, 0.2)
    h, w = size
    render = Render(
        features=torch.rand(2, 6, h, w), alpha=torch.rand(2, 1, h, w), depth=torch.zeros(2, 1, h, w)
    )

    def reference(r: Render) -> torch.Tensor:  # the layout as the module docstring states it
        x = torch.cat([r.features, r.alpha], 1)
        x = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
        skips = [net.stem(x)]
        for down in net.down:
            skips.append(down(skips[-1]))
        y = skips.pop()
        for reduce, merge in zip(reversed(net.reduce), reversed(net.merge)):
            skip = skips.pop()
            y = merge(F.interpolate(reduce(y), size=skip.shape[-2:], mode="nearest") + skip)
        return (r.features[:, :3] + F.pixel_shuffle(net.head(y), 2)[..., :h, :w]).clamp(0, 1)

    with torch.no_grad():
        out = net(render)
        assert out.shape == (2, 3, h, w)
        assert torch.allclose(out, reference(render), atol=1e-5)


@pytest.fixture(scope="module")
def separated():
    """A tiny separated pipeline (procedural head) whose avatar is given a still torso and a static
    background by hand, so the session's cached paths all run."""
    pipe = Pipeline.from_dict(
        tiny_pipeline(
            headmodel=HEAD,
            lifter={"name": "mesh-anchored", "anchors_per_face": 1},
            driver={"name": "light-control", "anchors_per_face": 1},
            refiner={"name": "light-unet", "widths": [8, 16]},
        )
    )
    for p in pipe.driver.heads.parameters():  # untrained heads give zero offsets: make them move
        p.data.normal_(0, 0.3)
    for p in pipe.refiner.parameters():
        p.data.normal_(0, 0.1)
    avatar = pipe.reconstruct(sample_image(pipe.config.source_size))
    ys = avatar.static.means[0, :, 1]
    body = ((ys.max() - ys) / (ys.max() - ys.min())).clamp(0, 1)[None] ** 2  # lower Gaussians held more
    body = torch.where(body > 0.3, body, torch.zeros_like(body))
    s = pipe.config.source_size
    background = torch.zeros(1, avatar.static.channels, s, s)
    background[:, :3] = sample_image(s)
    avatar = dataclasses.replace(avatar, body=body, background=background)
    motion = demo_motion(pipe.head_model, 12)
    params = motion.select(slice(2, 5))
    params = params.replace(rotation=params.rotation + torch.tensor([[0.0, 0.4, 0.1]]))  # turn the head
    return pipe, avatar, params


def _frames(pipe, avatar, params, camera, **kwargs):
    return drive_frames(avatar, params, camera, pipe.driver, pipe.rasterizer, pipe.refiner, **kwargs)


def test_session_frames_equal_the_differentiable_frames(separated):
    pipe, avatar, params = separated
    assert int((avatar.body > 0).sum()) > 0 and int((avatar.body == 0).sum()) > 0
    camera = avatar.camera.resized(48, 48)
    with torch.enable_grad():  # the training path: no cache, every constant recomputed
        slow_render, slow = _frames(pipe, avatar, params, camera, cache={})
    cache: dict = {}
    with torch.no_grad():
        for _ in range(2):  # the first call fills the cache, the second reads it
            fast_render, fast = _frames(pipe, avatar, params, camera, cache=cache)
            assert torch.allclose(fast, slow.detach(), atol=2e-5)
            assert torch.allclose(fast_render.features, slow_render.features.detach(), atol=2e-5)
    assert "torso" in cache and any(k[0] == "background" for k in cache if isinstance(k, tuple))
    # the frames move: the head turned, so the still torso is not the whole picture
    with torch.no_grad():
        _, still = _frames(pipe, avatar, avatar.source, camera, cache=cache)
    assert float((still - fast[:1]).abs().mean()) > 1e-3


def test_the_driver_forgets_its_constants_when_its_weights_change(separated):
    pipe, avatar, params = separated
    driver = pipe.driver
    with torch.no_grad():
        before = driver.drive(avatar, params).means
        head = driver.heads[1]  # the mouth head
        saved = head.out.bias.clone()
        head.out.bias.add_(0.5)  # an optimiser step, in place
        after = driver.drive(avatar, params).means
        head.out.bias.copy_(saved)
        again = driver.drive(avatar, params).means
    assert not torch.allclose(before, after)
    assert torch.allclose(before, again)
    with torch.enable_grad():
        graded = driver.drive(avatar, params).means
    assert torch.allclose(graded.detach(), before, atol=1e-6)
    assert graded.requires_grad  # training still reaches the control heads


def test_the_head_model_recomputes_the_identity_shape_for_a_new_identity(separated):
    pipe, _, params = separated
    hm = pipe.head_model
    with torch.no_grad():
        a = hm(params).vertices
        other = params.replace(identity=params.identity + 0.5)
        b = hm(other).vertices
        c = hm(params).vertices
    with torch.enable_grad():
        d = hm(other).vertices
    assert not torch.allclose(a, b) and torch.equal(a, c)
    assert torch.allclose(b, d.detach(), atol=1e-6)


def test_outputs_larger_than_raster_size_are_rasterized_there_and_upsampled(separated):
    pipe, avatar, params = separated
    seen = []
    rasterizer = pipe.rasterizer

    def spy(gaussians, camera, background=None):
        seen.append((camera.width, camera.height))
        return rasterizer(gaussians, camera, background)

    big = avatar.camera.resized(96, 64)
    with torch.no_grad():
        render, image = drive_frames(avatar, params, big, pipe.driver, spy, pipe.refiner, raster_size=48)
        _, native = drive_frames(avatar, params, big, pipe.driver, spy, pipe.refiner)
    assert seen == [(48, 32), (96, 64)]
    assert image.shape[-2:] == (64, 96) and render.features.shape[-2:] == (32, 48)
    assert float(image.min()) >= 0 and float(image.max()) <= 1
    assert 0 < float((image - native).abs().mean()) < 0.1  # the same frame, at less detail
    assert raster_camera(big, 128) is big  # never upsampled past the output
    small = raster_camera(big, 48)
    assert torch.allclose(small.intrinsics[0, :2], big.intrinsics[0, :2] / 2)


def test_a_session_at_twice_the_raster_size_gives_alpha_at_the_output_size(separated):
    pipe, avatar, params = separated
    plain = dataclasses.replace(avatar, background=None)
    session = pipe.session(plain, render_size=64, raster_size=32)
    with torch.no_grad():
        rgba = session.render(params, alpha=True)
    assert rgba.shape == (params.batch_size, 4, 64, 64)
    assert 0 < float(rgba[:, 3].mean()) < 1
