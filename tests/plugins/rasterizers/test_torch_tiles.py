"""The pure-torch reference rasterizer (``torch-tiles``) and the shared projection.

Oracles: gsplat's pure-torch projection helpers (``gsplat.cuda._torch_impl``; no CUDA is used)
for projection, and a brute-force compositor written here: every pixel of the image against
every projected Gaussian, one Gaussian at a time in depth order, with no tiles, no boxes and no
cumulative products. It uses gsplat's projection, so it shares no code with the rasterizer.
"""

from __future__ import annotations

import math

import pydantic
import pytest
import roma
import torch

from gshead.core.components import BuildContext
from gshead.core.errors import GsheadError, ShapeError
from gshead.core.registry import Register
from gshead.core.types import Camera, Gaussians
from gshead.plugins.rasterizers._projection import (
    check_finite,
    project_gaussians,
    quat_scale_to_covariance,
)
from gshead.plugins.rasterizers.torch_tiles import (
    TorchTilesConfig,
    TorchTilesRasterizer,
    gshead_register_rasterizers,
    rasterize_tiles,
)

gsplat_torch = pytest.importorskip("gsplat.cuda._torch_impl")

W, H = 40, 32


# -- scenes ---------------------------------------------------------------------------------------
def random_gaussians(
    n: int,
    channels: int,
    batch: int = 1,
    seed: int = 0,
    spread: float = 0.6,
    scale: tuple[float, float] = (0.005, 0.08),
    opacity: tuple[float, float] = (0.05, 0.95),
    dtype: torch.dtype = torch.float32,
) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g, dtype=dtype)  # noqa: E731
    return Gaussians(
        means=(r(batch, n, 3) * 2 - 1) * spread,
        quats=torch.randn(batch, n, 4, generator=g, dtype=dtype),
        scales=scale[0] + r(batch, n, 3) * (scale[1] - scale[0]),
        opacities=opacity[0] + r(batch, n) * (opacity[1] - opacity[0]),
        features=r(batch, n, channels),
    )


def random_cameras(
    batch: int, seed: int = 0, distance: float = 2.0, width: int = W, height: int = H, dtype=torch.float32
) -> Camera:
    """Randomly rotated cameras looking at the origin from ``distance``, off-centre principal points."""
    g = torch.Generator().manual_seed(seed)
    w2c = torch.eye(4, dtype=torch.float64).repeat(batch, 1, 1)
    quats = torch.randn(batch, 4, generator=g, dtype=torch.float64)
    w2c[:, :3, :3] = roma.unitquat_to_rotmat(torch.nn.functional.normalize(quats, dim=-1))
    shift = 0.05 * torch.randn(batch, 3, generator=g, dtype=torch.float64)
    w2c[:, :3, 3] = torch.tensor([0.1, -0.05, distance], dtype=torch.float64) + shift
    k = torch.zeros(batch, 3, 3, dtype=torch.float64)
    k[:, 0, 0] = 1.1 * width * (1 + 0.1 * torch.rand(batch, generator=g, dtype=torch.float64))
    k[:, 1, 1] = 1.0 * width * (1 + 0.1 * torch.rand(batch, generator=g, dtype=torch.float64))
    k[:, 0, 2] = width * (0.35 + 0.3 * torch.rand(batch, generator=g, dtype=torch.float64))
    k[:, 1, 2] = height * (0.35 + 0.3 * torch.rand(batch, generator=g, dtype=torch.float64))
    k[:, 2, 2] = 1.0
    return Camera(w2c.to(dtype), k.to(dtype), width, height)


def project(gaussians: Gaussians, camera: Camera):
    """``project_gaussians`` on the containers."""
    g, c = gaussians, camera
    return project_gaussians(g.means, g.quats, g.scales, c.world_to_camera, c.intrinsics, c.width, c.height)


# -- oracles --------------------------------------------------------------------------------------
def gsplat_project(gaussians: Gaussians, camera: Camera, b: int):
    """gsplat's pure-torch projection of batch row ``b``: radii, means2d, depths, conics."""
    covars, _ = gsplat_torch._quat_scale_to_covar_preci(
        gaussians.quats[b], gaussians.scales[b], compute_covar=True, compute_preci=False
    )
    radii, means2d, depths, conics, _ = gsplat_torch._fully_fused_projection(
        gaussians.means[b],
        covars,
        camera.world_to_camera[b : b + 1].to(gaussians.means.dtype),
        camera.intrinsics[b : b + 1].to(gaussians.means.dtype),
        camera.width,
        camera.height,
        eps2d=0.3,
        near_plane=0.01,
    )
    return radii[0], means2d[0], depths[0], conics[0]


def brute_force(gaussians: Gaussians, camera: Camera, background=None):
    """Per-pixel sequential compositing over all Gaussians.

    Returns (features, alpha, depth, stats) with stats counting stopped pixels and pairs whose
    alpha hit the 0.999 clamp (so tests can prove they exercise those rules).
    """
    dtype = gaussians.means.dtype
    c = gaussians.channels
    bg = torch.zeros(c, dtype=dtype) if background is None else background.to(dtype)
    ys, xs = torch.meshgrid(
        torch.arange(camera.height, dtype=dtype), torch.arange(camera.width, dtype=dtype), indexing="ij"
    )
    px, py = xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5  # [HW]
    feats, alphas, depths_out = [], [], []
    stats = {"stopped": 0, "clamped": 0}
    gaussians = gaussians.expand(camera.batch_size)
    for b in range(camera.batch_size):
        radii, means2d, depths, conics = gsplat_project(gaussians, camera, b)
        visible = (radii > 0).all(-1).nonzero()[:, 0]
        order = visible[torch.sort(depths[visible], stable=True).indices]
        trans = torch.ones_like(px)
        done = torch.zeros_like(px, dtype=torch.bool)
        acc = torch.zeros(px.shape[0], c, dtype=dtype)
        acc_z = torch.zeros_like(px)
        for i in order.tolist():
            dx, dy = px - means2d[i, 0], py - means2d[i, 1]
            a, bb, cc = conics[i]
            sigma = 0.5 * (a * dx * dx + cc * dy * dy) + bb * dx * dy
            alpha = torch.clamp(gaussians.opacities[b, i] * torch.exp(-sigma), max=0.999)
            use = ~done & (sigma >= 0) & (alpha >= 1.0 / 255.0)
            stats["clamped"] += int((use & (gaussians.opacities[b, i] * torch.exp(-sigma) > 0.999)).sum())
            next_t = trans * (1 - alpha)
            stop = use & (next_t <= 1e-4)
            done = done | stop
            blend = use & ~stop
            w = torch.where(blend, alpha * trans, torch.zeros_like(trans))
            acc = acc + w[:, None] * gaussians.features[b, i]
            acc_z = acc_z + w * depths[i]
            trans = torch.where(blend, next_t, trans)
        stats["stopped"] += int(done.sum())
        feats.append((acc + trans[:, None] * bg).T.reshape(c, camera.height, camera.width))
        alphas.append((1 - trans).reshape(1, camera.height, camera.width))
        depths_out.append(acc_z.reshape(1, camera.height, camera.width))
    return torch.stack(feats), torch.stack(alphas), torch.stack(depths_out), stats


def assert_render_close(render, expected, atol=1e-5):
    feats, alpha, depth = expected[:3]
    assert render.features.shape == feats.shape
    torch.testing.assert_close(render.features, feats, atol=atol, rtol=0)
    torch.testing.assert_close(render.alpha, alpha, atol=atol, rtol=0)
    torch.testing.assert_close(render.depth, depth, atol=atol, rtol=0)


# -- (a) projection -------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_projection_matches_gsplat(seed):
    # Wide spread: some Gaussians behind the camera, some beyond the field of view (clamped Jacobian).
    gaussians = random_gaussians(400, 3, batch=3, seed=seed, spread=2.5, scale=(0.0, 0.3))
    camera = random_cameras(3, seed=seed)
    proj = project_gaussians(
        gaussians.means, gaussians.quats, gaussians.scales, camera.world_to_camera, camera.intrinsics, W, H
    )
    clamped = 0
    for b in range(3):
        radii, means2d, depths, conics = gsplat_project(gaussians, camera, b)
        assert torch.equal(proj.radii[b], radii)
        ok = (radii > 0).all(-1)
        assert torch.equal(proj.valid[b], ok)
        assert 0 < int(ok.sum()) < 400  # some kept, some culled
        assert bool((depths <= 0.01).any())  # some behind the camera
        torch.testing.assert_close(proj.depths[b], depths, atol=1e-5, rtol=0)
        torch.testing.assert_close(proj.means2d[b][ok], means2d[ok], atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(proj.conics[b][ok], conics[ok], atol=1e-5, rtol=1e-5)
        u = (means2d[ok, 0] - camera.intrinsics[b, 0, 2]) / camera.intrinsics[b, 0, 0]
        clamped += int((u.abs() > 0.65 * W / camera.intrinsics[b, 0, 0]).sum())
    assert clamped > 0  # the field-of-view clamp of the Jacobian was exercised
    assert proj.radii.dtype == torch.int32
    assert torch.isfinite(proj.means2d).all() and torch.isfinite(proj.conics).all()


def test_covariance_matches_gsplat():
    g = random_gaussians(50, 1, seed=3, scale=(0.0, 1.0))
    cov = quat_scale_to_covariance(g.quats, g.scales)
    ref, _ = gsplat_torch._quat_scale_to_covar_preci(g.quats, g.scales, compute_preci=False)
    torch.testing.assert_close(cov, ref, atol=1e-6, rtol=1e-5)


# -- (b) against the brute-force compositor -------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3, 7])
def test_matches_brute_force(channels):
    gaussians = random_gaussians(200, channels, seed=10 + channels)
    camera = random_cameras(1, seed=channels)
    background = torch.linspace(0.2, 0.9, channels)
    expected = brute_force(gaussians, camera, background)
    render = rasterize_tiles(gaussians, camera, background)
    assert float(render.alpha.max()) > 0.9 and float(render.alpha.min()) < 0.01  # covered and empty pixels
    assert_render_close(render, expected)


def test_matches_brute_force_with_early_termination():
    # Opaque, overlapping Gaussians: many pixels reach T <= 1e-4 and stop. In front of them, six
    # fully opaque ones centred exactly on pixel centres, where alpha = min(0.999, 1.0) is clamped.
    camera = random_cameras(1, seed=5)
    gaussians = random_gaussians(200, 3, seed=5, spread=0.3, scale=(0.05, 0.15), opacity=(0.9, 1.0))
    pixels = torch.tensor([[5.5, 4.5], [12.5, 20.5], [20.5, 15.5], [27.5, 8.5], [33.5, 25.5], [8.5, 28.5]])
    k, w2c = camera.intrinsics[0], camera.world_to_camera[0]
    z = 1.2  # camera-space depth, in front of the scene (at about 2)
    cam_xy = (pixels - k[:2, 2]) / torch.stack([k[0, 0], k[1, 1]]) * z  # back-projected at depth z
    cam_xyz = torch.cat([cam_xy, torch.full((6, 1), z)], -1)
    front = random_gaussians(6, 3, seed=6, scale=(0.02, 0.04), opacity=(1.0, 1.0))
    front = front.replace(means=((cam_xyz - w2c[:3, 3]) @ w2c[:3, :3])[None])  # R^T (x - t)
    gaussians = Gaussians.cat([gaussians, front])
    expected = brute_force(gaussians, camera, torch.tensor([1.0, 0.5, 0.0]))
    assert expected[3]["stopped"] > 100  # the early-stop rule really fired on many pixels
    assert expected[3]["clamped"] >= 6  # and so did the 0.999 clamp
    for chunk in (512, 3):  # chunks carry T and the stop flag across their boundaries
        render = rasterize_tiles(gaussians, camera, torch.tensor([1.0, 0.5, 0.0]), chunk_size=chunk)
        assert_render_close(render, expected)


def test_batch_of_two_cameras():
    camera = random_cameras(2, seed=7)
    per_view = random_gaussians(150, 3, batch=2, seed=7)
    expected = brute_force(per_view, camera)
    render = rasterize_tiles(per_view, camera)
    assert_render_close(render, expected)
    assert (render.features[0] - render.features[1]).abs().max() > 0.1  # the views really differ
    shared = random_gaussians(150, 3, batch=1, seed=8)  # one set of Gaussians seen by both cameras
    assert_render_close(rasterize_tiles(shared, camera), brute_force(shared, camera))


# -- (c) tiling does not change the image ---------------------------------------------------------
def test_tile_size_and_chunking_do_not_change_the_result():
    gaussians = random_gaussians(300, 4, seed=21, scale=(0.005, 0.2))
    camera = random_cameras(1, seed=21, width=50, height=37)  # not a multiple of any tile size
    base = rasterize_tiles(gaussians, camera, tile_size=16)
    for tile_size, chunk in ((8, 512), (32, 512), (16, 7), (5, 64)):
        other = rasterize_tiles(gaussians, camera, tile_size=tile_size, chunk_size=chunk)
        for name in ("features", "alpha", "depth"):
            torch.testing.assert_close(getattr(other, name), getattr(base, name), atol=1e-6, rtol=0)
    assert float(base.alpha.max()) > 0.5


# -- (d) gradients --------------------------------------------------------------------------------
def test_gradcheck():
    """float64 gradcheck on 5 Gaussians over a 12x12 image in 8x8 tiles.

    The scene is chosen away from every discontinuity of the forward pass: the Gaussians are large
    (about 8 px) and half transparent, so every Gaussian-pixel pair has alpha well inside
    (1/255, 0.999) (nothing skipped, nothing clamped), transmittance stays far above 1e-4 (no early
    stop), and all boxes lie well inside the image and cover it (culling and tiling fixed). The
    test asserts these margins before checking gradients.
    """
    dtype = torch.float64
    camera = Camera.frontal(2.0, 50.0, 12, 12, dtype=dtype)
    g = torch.Generator().manual_seed(0)
    means = (0.15 * (torch.rand(1, 5, 3, generator=g, dtype=dtype) - 0.5)).requires_grad_()
    quats = torch.randn(1, 5, 4, generator=g, dtype=dtype).requires_grad_()
    scales = (1.1 + 0.3 * torch.rand(1, 5, 3, generator=g, dtype=dtype)).requires_grad_()
    opacities = (0.3 + 0.2 * torch.rand(1, 5, generator=g, dtype=dtype)).requires_grad_()
    features = torch.rand(1, 5, 2, generator=g, dtype=dtype).requires_grad_()
    background = torch.tensor([0.3, 0.7], dtype=dtype)

    # Margins from the thresholds, checked with the brute-force oracle's formulas.
    with torch.no_grad():
        gs = Gaussians(means, quats, scales, opacities, features)
        proj = project_gaussians(means, quats, scales, camera.world_to_camera, camera.intrinsics, 12, 12)
        assert bool(proj.valid.all())
        centres = torch.arange(12, dtype=dtype) + 0.5
        ys, xs = torch.meshgrid(centres, centres, indexing="ij")
        dx = xs - proj.means2d[0, :, 0, None, None]  # [5, 12, 12]
        dy = ys - proj.means2d[0, :, 1, None, None]  # [5, 12, 12]
        a, b, c = (proj.conics[0, :, i, None, None] for i in range(3))
        alpha = opacities[0, :, None, None] * torch.exp(-(0.5 * (a * dx**2 + c * dy**2) + b * dx * dy))
        assert float(alpha.min()) > 0.02 and float(alpha.max()) < 0.6
        assert float(rasterize_tiles(gs, camera, background).alpha.max()) < 0.99  # T > 0.01 >> 1e-4

    # The full Jacobian has 576 rows (one backward pass each); check 24 fixed random combinations
    # of all outputs instead (every output pixel and channel enters each of them).
    mix = torch.randn(24, 4 * 12 * 12, generator=g, dtype=dtype)

    def render(means, quats, scales, opacities, features):
        gs = Gaussians(means, quats, scales, opacities, features)
        out = rasterize_tiles(gs, camera, background, tile_size=8)
        return mix @ torch.cat([out.features.reshape(-1), out.alpha.reshape(-1), out.depth.reshape(-1)])

    assert torch.autograd.gradcheck(render, (means, quats, scales, opacities, features), eps=1e-6, atol=1e-6)


def test_gradients_reach_every_input_float32():
    gaussians = random_gaussians(60, 3, seed=30)
    leaves = {k: v.clone().requires_grad_() for k, v in gaussians.tensors().items()}
    render = rasterize_tiles(Gaussians(**leaves), random_cameras(1, seed=30))
    (render.features.sum() + render.depth.sum()).backward()
    for name, leaf in leaves.items():
        assert leaf.grad is not None and torch.isfinite(leaf.grad).all(), name
        assert float(leaf.grad.abs().sum()) > 0, name


# -- (e) degenerate inputs ------------------------------------------------------------------------
def test_zero_gaussians_give_the_background():
    camera = random_cameras(2, seed=1)
    empty = random_gaussians(0, 3, batch=2)
    background = torch.tensor([0.1, 0.2, 0.3])
    render = rasterize_tiles(empty, camera, background)
    assert render.features.shape == (2, 3, H, W)
    assert torch.equal(render.features, background[None, :, None, None].expand(2, 3, H, W))
    assert torch.equal(render.alpha, torch.zeros(2, 1, H, W))
    assert torch.equal(render.depth, torch.zeros(2, 1, H, W))


def test_all_behind_the_camera_give_the_background():
    camera = Camera.frontal(2.0, 40.0, W, H)  # looks along -z in the world, from z = +2
    gaussians = random_gaussians(50, 2, seed=2, spread=0.5)
    behind = gaussians.replace(means=gaussians.means + torch.tensor([0.0, 0.0, 3.0]))  # z in [2.5, 3.5]
    render = rasterize_tiles(behind, camera, torch.tensor([0.5, 1.0]))
    assert torch.equal(render.alpha, torch.zeros(1, 1, H, W))
    assert torch.equal(render.features[0, 1], torch.ones(H, W))
    # ... while the same Gaussians in front are drawn (so the test can fail).
    assert float(rasterize_tiles(gaussians, camera).alpha.max()) > 0.5


def test_huge_scales_cover_the_image():
    camera = random_cameras(1, seed=3)
    gaussians = random_gaussians(3, 3, seed=3, spread=0.1, scale=(20.0, 50.0), opacity=(0.3, 0.5))
    proj = project(gaussians, camera)
    assert int(proj.radii.min()) > 10 * W  # boxes far larger than the image
    render = rasterize_tiles(gaussians, camera, tile_size=8)
    expected = brute_force(gaussians, camera)
    assert_render_close(render, expected)
    assert float(render.alpha.min()) > 0.5  # every pixel covered


def test_zero_scales_make_one_pixel_blobs():
    camera = Camera.frontal(2.0, 40.0, W, H)
    gaussians = Gaussians(
        means=torch.tensor([[[0.0, 0.0, 0.0], [0.3, 0.2, 0.1]]]),
        quats=torch.tensor([[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]]),  # zero quaternion: identity
        scales=torch.zeros(1, 2, 3),
        opacities=torch.tensor([[0.9, 0.8]]),
        features=torch.ones(1, 2, 1),
    )
    proj = project(gaussians, camera)
    assert proj.radii.tolist() == [[[2, 2], [2, 2]]]  # ceil(3.33 * sqrt(0.3)) = 2
    render = rasterize_tiles(gaussians, camera)
    assert_render_close(render, brute_force(gaussians, camera))
    # Mean 0 projects to the pixel corner (20, 16): four pixels at distance sqrt(0.5) share the peak.
    peak = 0.9 * math.exp(-0.5 * 0.5 / 0.3)
    assert render.alpha[0, 0, 15:17, 19:21] == pytest.approx(torch.full((2, 2), peak), abs=1e-6)
    assert int((render.alpha > 1 / 255).sum()) < 40  # tiny blobs, not smears


@pytest.mark.parametrize("field", ["means", "quats", "scales", "opacities", "features"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_inputs_raise_a_clear_error(field, bad):
    gaussians = random_gaussians(10, 3, seed=4)
    broken = getattr(gaussians, field).clone()
    broken.view(-1)[3] = bad
    with pytest.raises(GsheadError, match=rf"^Gaussians\.{field} contains NaN or inf$"):
        rasterize_tiles(gaussians.replace(**{field: broken}), random_cameras(1))
    check_finite(gaussians)  # the intact scene passes


def test_bad_background_and_batches_are_refused():
    gaussians = random_gaussians(10, 3, batch=2)
    with pytest.raises(ShapeError, match="background"):
        rasterize_tiles(gaussians, random_cameras(2), torch.zeros(4))
    with pytest.raises(ShapeError, match="cameras"):
        rasterize_tiles(gaussians, random_cameras(3))
    with pytest.raises(GsheadError, match="Camera.intrinsics"):
        cam = random_cameras(2)
        rasterize_tiles(gaussians, cam.replace(intrinsics=cam.intrinsics * float("nan")))


# -- plugin -----------------------------------------------------------------------------------------
def test_registers_and_builds_as_a_component():
    into = {}
    gshead_register_rasterizers(register=Register("rasterizer", "test", into))
    registered = [(spec.config_class, spec.factory) for spec in into.values()]
    assert registered == [(TorchTilesConfig, TorchTilesRasterizer)]
    config = TorchTilesConfig.model_validate({"name": "torch-tiles", "tile_size": 8})
    assert config.near_plane == 0.01
    assert TorchTilesConfig.model_fields["tile_size"].description  # documented
    with pytest.raises(pydantic.ValidationError, match="tile_size"):
        TorchTilesConfig.model_validate({"name": "torch-tiles", "tile_size": 0})
    rasterizer = TorchTilesRasterizer(config, BuildContext(feature_channels=3))
    gaussians, camera = random_gaussians(40, 3, seed=9), random_cameras(1, seed=9)
    out = rasterizer(gaussians, camera)
    ref = rasterize_tiles(gaussians, camera, tile_size=8)
    assert torch.equal(out.features, ref.features) and float(out.alpha.max()) > 0
