"""The CPU reference components: tiny-conv, single-plane, identity, frontal."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gshead.core.components import BuildContext, Encoder, Lifter, Refiner, Tracker
from gshead.core.errors import InputError, ShapeError
from gshead.core.types import Camera, FeatureMaps, Gaussians, HeadParams, Render, Tracked
from gshead.plugins.encoders.tiny_conv import TinyConvConfig, TinyConvEncoder
from gshead.plugins.lifters.single_plane import SinglePlaneConfig, SinglePlaneLifter
from gshead.plugins.refiners.identity import IdentityRefiner, IdentityRefinerConfig
from gshead.plugins.trackers.frontal import FrontalTracker, FrontalTrackerConfig

C = 8  # Gaussian feature channels in these tests


class StubHeadModel:
    """Just enough of a HeadModel for the tracker: neutral parameters."""

    def neutral(self, batch_size: int = 1) -> HeadParams:
        return HeadParams.zeros(4, 3, batch_size)


def _encoder(channels: int = 16) -> TinyConvEncoder:
    torch.manual_seed(0)
    return TinyConvEncoder(TinyConvConfig(channels=channels, global_channels=12), BuildContext(C))


def _lifter(encoder: TinyConvEncoder, resolution: int = 16, channels: int = C) -> SinglePlaneLifter:
    torch.manual_seed(1)
    context = BuildContext(
        channels,
        head_model=StubHeadModel(),  # type: ignore[arg-type]
        encoder_channels=encoder.out_channels,
        encoder_global_channels=encoder.global_channels,
    )
    return SinglePlaneLifter(SinglePlaneConfig(resolution=resolution), context)


def _image(b: int = 2, h: int = 32, w: int = 48) -> torch.Tensor:
    """A smooth, non-constant image batch in [0, 1]."""
    y = torch.linspace(0, 1, h)[:, None]
    x = torch.linspace(0, 1, w)[None]
    base = torch.stack([x.expand(h, w), y.expand(h, w), 0.5 + 0.4 * torch.sin(6 * x * y)])
    return torch.stack([base * (0.6 + 0.4 * i / max(b - 1, 1)) for i in range(b)])


def _project(means: torch.Tensor, camera: Camera) -> tuple[torch.Tensor, torch.Tensor]:
    """World points [B, N, 3] -> (pixel coordinates [B, N, 2], camera depth [B, N])."""
    w2c = camera.world_to_camera
    cam = means @ w2c[:, :3, :3].transpose(1, 2) + w2c[:, None, :3, 3]
    pix = cam @ camera.intrinsics.transpose(1, 2)
    return pix[..., :2] / pix[..., 2:], cam[..., 2]


def _oblique_camera(width: int, height: int, batch: int) -> Camera:
    """A frontal camera turned about y and shifted, so world and camera axes differ."""
    camera = Camera.frontal(1.2, 25.0, width, height, batch)
    angle = math.radians(30.0)
    turn = torch.eye(4)
    cos, sin = math.cos(angle), math.sin(angle)
    turn[0, 0], turn[0, 2], turn[2, 0], turn[2, 2] = cos, sin, -sin, cos
    turn[:3, 3] = torch.tensor([0.05, -0.02, 0.1])
    return camera.moved(turn.expand(batch, 4, 4))


# ------------------------------------------------------------------------------------------ encoder


def test_encoder_shapes_and_channels():
    encoder = _encoder(channels=16)
    assert isinstance(encoder, Encoder)
    assert encoder.out_channels == (16,) and encoder.global_channels == 12
    image = _image(2, 32, 48)
    maps = encoder(image)
    assert isinstance(maps, FeatureMaps)
    assert maps.image is image
    assert len(maps.local) == 1 and maps.local[0].shape == (2, 16, 8, 12)
    assert maps.global_token.shape == (2, 12)
    assert torch.isfinite(maps.local[0]).all()


@pytest.mark.parametrize("size", [(30, 32), (32, 34), (17, 17)])
def test_encoder_refuses_sizes_not_divisible_by_4(size):
    with pytest.raises(ShapeError) as exc:
        _encoder()(torch.rand(1, 3, *size))
    assert "multiple of 4" in str(exc.value) and "\n" not in str(exc.value)


def test_encoder_refuses_wrong_channel_count():
    with pytest.raises(ShapeError, match=r"\[B, 3, H, W\]"):
        _encoder()(torch.rand(1, 4, 32, 32))


# ------------------------------------------------------------------------------------------ lifter


@pytest.mark.parametrize("oblique", [False, True], ids=["frontal", "oblique"])
def test_untrained_lifter_reproduces_the_source(oblique):
    b, h, w, r = 2, 32, 48, 16
    encoder = _encoder()
    lifter = _lifter(encoder, resolution=r)
    assert isinstance(lifter, Lifter)
    image = _image(b, h, w)
    camera = _oblique_camera(w, h, b) if oblique else Camera.frontal(1.0, 18.0, w, h, 1)  # batch 1 broadcasts
    with torch.no_grad():
        gaussians = lifter(encoder(image), HeadParams.zeros(4, 3, b), camera)
    assert isinstance(gaussians, Gaussians)
    assert gaussians.count == r * r and gaussians.batch_size == b and gaussians.channels == C

    # Means project onto the pixel grid they were sampled from (pixel centres at +0.5, row-major).
    camera = camera.expand(b)
    pixels, depth = _project(gaussians.means, camera)
    jj, ii = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
    grid = torch.stack([(ii.flatten() + 0.5) * w / r, (jj.flatten() + 0.5) * h / r], dim=-1)
    assert torch.allclose(pixels, grid.expand(b, -1, -1), atol=1e-3)
    # ...on a plane through the world origin, perpendicular to the viewing axis.
    assert torch.allclose(depth, camera.world_to_camera[:, 2, 3, None].expand(b, r * r), atol=1e-5)

    # RGB equals the image sampled at those projections.
    norm = torch.stack([2 * grid[:, 0] / w - 1, 2 * grid[:, 1] / h - 1], dim=-1)
    sampled = F.grid_sample(image, norm.expand(b, 1, -1, 2), align_corners=False)[:, :, 0]  # [B, 3, N]
    assert torch.allclose(gaussians.features[..., :3], sampled.transpose(1, 2), atol=1e-5)
    assert not torch.allclose(gaussians.features[0, :, :3], gaussians.features[1, :, :3])  # per-image colours

    # Ranges and initial values.
    assert ((gaussians.opacities > 0) & (gaussians.opacities < 1)).all()
    assert torch.allclose(gaussians.opacities, torch.full_like(gaussians.opacities, 0.95), atol=1e-5)
    assert torch.allclose(gaussians.quats.norm(dim=-1), torch.ones(b, r * r), atol=1e-6)
    assert torch.allclose(gaussians.quats, torch.tensor([1.0, 0, 0, 0]).expand(b, r * r, 4))
    # Grid spacing on the plane, in world units (the mean of the two axes when the image is not square).
    spacing_x = (w / r) / camera.intrinsics[:, 0, 0] * depth[:, 0]
    spacing_y = (h / r) / camera.intrinsics[:, 1, 1] * depth[:, 0]
    ratio = gaussians.scales / (0.5 * (spacing_x + spacing_y))[:, None, None]
    assert (gaussians.scales > 0).all()
    assert ratio.min() > 0.55 and ratio.max() < 0.75
    assert torch.allclose(gaussians.scales, gaussians.scales[..., :1].expand(-1, -1, 3))  # isotropic


def test_untrained_lifter_renders_back_to_the_source():
    """With the reference rasterizer (when present), the untrained avatar looks like the portrait."""
    tiles = pytest.importorskip("gshead.plugins.rasterizers.torch_tiles")
    rasterize = getattr(tiles, "rasterize_tiles", None)
    if rasterize is None:
        pytest.skip("torch_tiles.rasterize_tiles is not available")
    from gshead.io.media import read_image, square_resize

    image = square_resize(read_image("example:astronaut"), 64)
    encoder = _encoder(channels=8)
    lifter = _lifter(encoder, resolution=32, channels=4)
    camera = Camera.frontal(1.0, 18.0, 64, 64)
    with torch.no_grad():
        render = rasterize(lifter(encoder(image), HeadParams.zeros(4, 3, 1), camera), camera)
    rgb = render.features[:, :3]

    def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(-10 * torch.log10((a - b).square().mean()))

    assert psnr(rgb, image) > 17.0  # as sharp as a 32x32 grid allows (a flat grey image: ~10.6 dB)
    assert psnr(rgb, image) > psnr(rgb, torch.roll(image, 4, dims=-1)) + 4  # aligned, not shifted
    assert psnr(rgb, image) > psnr(rgb, image.flip(-2)) + 4  # upright, not flipped
    assert render.alpha.mean() > 0.95


def test_lifter_gradients_reach_the_encoder():
    encoder = _encoder()
    lifter = _lifter(encoder, resolution=8)
    image = _image(1, 32, 32)
    gaussians = lifter(encoder(image), HeadParams.zeros(4, 3, 1), Camera.frontal(1.0, 18.0, 32, 32))
    loss = gaussians.features.square().sum() + gaussians.means.sum() + gaussians.opacities.sum()
    loss.backward()
    grads = [p.grad for p in encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    assert encoder.stem[0].weight.grad.abs().sum() > 0  # the very first layer
    assert lifter.out.weight.grad.abs().sum() > 0  # the zero-initialised rows learn too


def test_lifter_output_depends_on_training():
    """After one step the geometry moves: the zero-initialised head is not stuck at zero."""
    encoder = _encoder()
    lifter = _lifter(encoder, resolution=8)
    image = _image(1, 32, 32)
    camera = Camera.frontal(1.0, 18.0, 32, 32)
    before = lifter(encoder(image), HeadParams.zeros(4, 3, 1), camera)
    (before.means[..., 2].sum() + before.scales.sum()).backward()
    with torch.no_grad():  # one plain gradient step (torch.optim's first use is slow to import)
        for p in [*encoder.parameters(), *lifter.parameters()]:
            if p.grad is not None:
                p -= 0.1 * p.grad
    with torch.no_grad():
        after = lifter(encoder(image), HeadParams.zeros(4, 3, 1), camera)
    assert not torch.allclose(after.means, before.means.detach())
    assert not torch.allclose(after.scales, before.scales.detach())


def test_lifter_rgb_only_pipeline():
    encoder = _encoder()
    lifter = _lifter(encoder, resolution=4, channels=3)
    with torch.no_grad():
        camera = Camera.frontal(1.0, 18.0, 16, 16)
        gaussians = lifter(encoder(_image(1, 16, 16)), HeadParams.zeros(4, 3, 1), camera)
    assert gaussians.features.shape == (1, 16, 3)


def test_lifter_refuses_a_camera_behind_the_origin():
    encoder = _encoder()
    lifter = _lifter(encoder, resolution=4)
    camera = Camera.frontal(-1.0, 18.0, 32, 32)
    with pytest.raises(InputError, match="behind the source camera"):
        lifter(encoder(_image(1, 32, 32)), HeadParams.zeros(4, 3, 1), camera)


def test_lifter_refuses_a_mismatched_camera_batch():
    encoder = _encoder()
    lifter = _lifter(encoder, resolution=4)
    with pytest.raises(ShapeError, match="camera batch 3"):
        lifter(encoder(_image(2, 32, 32)), HeadParams.zeros(4, 3, 2), Camera.frontal(1.0, 18.0, 32, 32, 3))


# ------------------------------------------------------------------------------------------ refiner


def test_identity_refiner_returns_clamped_rgb():
    refiner = IdentityRefiner(IdentityRefinerConfig(), BuildContext(C))
    assert isinstance(refiner, Refiner)
    assert list(refiner.parameters()) == []
    features = 2.0 * torch.randn(2, C, 4, 5, generator=torch.Generator().manual_seed(0))
    render = Render(features=features, alpha=torch.ones(2, 1, 4, 5), depth=torch.ones(2, 1, 4, 5))
    out = refiner(render)
    assert out.shape == (2, 3, 4, 5)
    assert torch.equal(out, features[:, :3].clamp(0, 1))
    assert out.min() == 0 and out.max() == 1


# ------------------------------------------------------------------------------------------ tracker


def test_frontal_tracker_batch_and_camera():
    config = FrontalTrackerConfig(distance=1.5, fov_degrees=20.0)
    tracker = FrontalTracker(config, BuildContext(C, head_model=StubHeadModel()))  # type: ignore[arg-type]
    assert isinstance(tracker, Tracker)
    tracked = tracker.track(torch.rand(3, 3, 40, 60))
    assert isinstance(tracked, Tracked)
    assert tracked.params.batch_size == 3 and torch.equal(tracked.params.expression, torch.zeros(3, 3))
    camera = tracked.camera
    assert camera.batch_size == 3 and (camera.width, camera.height) == (60, 40)
    expected = Camera.frontal(1.5, 20.0, 60, 40, 3)
    assert torch.allclose(camera.world_to_camera, expected.world_to_camera)
    assert torch.allclose(camera.intrinsics, expected.intrinsics)
    # The world origin is straight ahead, at the configured distance, at the image centre.
    pixels, depth = _project(torch.zeros(3, 1, 3), camera)
    assert torch.allclose(depth, torch.full((3, 1), 1.5))
    assert torch.allclose(pixels, torch.tensor([30.0, 20.0]).expand(3, 1, 2))
    assert camera.intrinsics[0, 0, 0] == pytest.approx(30.0 / math.tan(math.radians(10.0)), rel=1e-5)


def test_frontal_tracker_defaults_and_validation():
    assert FrontalTrackerConfig().distance == 1.0 and FrontalTrackerConfig().fov_degrees == 18.0
    assert FrontalTrackerConfig.model_fields["distance"].description  # documented where declared
    with pytest.raises(ValueError):
        FrontalTrackerConfig(fov_degrees=0.0)
    with pytest.raises(ShapeError, match="head_model"):
        FrontalTracker(FrontalTrackerConfig(), BuildContext(C))


# ------------------------------------------------------------------------------------------ registration


@pytest.mark.parametrize(
    ("module", "hook", "name"),
    [
        ("gshead.plugins.encoders.tiny_conv", "gshead_register_encoders", "tiny-conv"),
        ("gshead.plugins.lifters.single_plane", "gshead_register_lifters", "single-plane"),
        ("gshead.plugins.refiners.identity", "gshead_register_refiners", "identity"),
        ("gshead.plugins.trackers.frontal", "gshead_register_trackers", "frontal"),
    ],
)
def test_each_module_registers_one_component(module, hook, name):
    import importlib

    from gshead.core.components import KIND_TABLE
    from gshead.core.registry import Register

    into: dict = {}
    kind = next(info.kind for info in KIND_TABLE if info.hook == hook)
    getattr(importlib.import_module(module), hook)(Register(kind, "test", into))
    calls = [(spec.config_class, spec.factory) for spec in into.values()]
    assert len(calls) == 1
    config_class, factory = calls[0]
    assert config_class().name == name
    for field, info in config_class.model_fields.items():
        assert field == "name" or info.description, f"{name}.{field} is undocumented"
