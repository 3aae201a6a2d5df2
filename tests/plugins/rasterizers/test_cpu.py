"""The ``cpu`` rasterizer against the pure-torch reference (``torch-tiles``).

Tests taking the ``render`` fixture run once per pair of compositing kernels (forward and
backward): the compiled AVX2 ones (``native``, skipped when not built here; ``.ci/run`` checks
that they are) and numba's.

Forward images, alpha and depth must match ``rasterize_tiles`` to 1e-4; gradients must match
the reference's autograd. Images are 40 x 36 so that the right and bottom tiles are partial.
The first test in a fresh checkout compiles the numba kernels (~20 s, cached on disk after).
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys

import numpy as np
import pytest
import roma
import torch

from gshead.benchmarking import head_scene  # the benchmarks' head-like scenes
from gshead.core.components import BuildContext
from gshead.core.errors import GsheadError, ShapeError
from gshead.core.registry import Registry
from gshead.core.types import Camera, Gaussians
from gshead.plugins.rasterizers import _cpu_native
from gshead.plugins.rasterizers.cpu import CpuRasterizer, CpuRasterizerConfig, rasterize_cpu
from gshead.plugins.rasterizers.torch_tiles import rasterize_tiles

W, H = 40, 36
ATOL = 1e-4


@pytest.fixture(params=["native", "numba"])
def render(request):
    """``rasterize_cpu`` with one pair of kernels (``native`` skips when the library is not built)."""
    if request.param == "native" and (why := _cpu_native.unavailable()):
        pytest.skip(why)
    return functools.partial(rasterize_cpu, kernel=request.param)


def random_scene(n: int, channels: int, seed: int = 0, batch: int = 1, scale: float = 0.06):
    """``n`` Gaussians scattered in front of a frontal camera, random shapes and opacities."""
    g = torch.Generator().manual_seed(seed)
    gaussians = Gaussians(
        means=(torch.rand(batch, n, 3, generator=g) - 0.5) * torch.tensor([1.0, 1.0, 0.6]),
        quats=torch.randn(batch, n, 4, generator=g),
        scales=torch.rand(batch, n, 3, generator=g) * scale + 0.005,
        opacities=torch.rand(batch, n, generator=g) * 0.95 + 0.05,
        features=torch.rand(batch, n, channels, generator=g),
    )
    return gaussians, Camera.frontal(2.5, 30.0, W, H, batch_size=batch)


def turned(camera: Camera, degrees: float) -> Camera:
    """``camera`` looking at the scene rotated by ``degrees`` about the vertical axis."""
    pose = torch.eye(4)
    pose[:3, :3] = roma.rotvec_to_rotmat(torch.tensor([0.0, math.radians(degrees), 0.0]))
    return camera.moved(pose[None])


def assert_renders_match(got, want, atol=ATOL):
    for field in ("features", "alpha", "depth"):
        a, b = getattr(got, field), getattr(want, field)
        assert a.shape == b.shape, field
        err = (a - b).abs().max().item()
        assert err <= atol, f"{field}: max abs error {err:.2e} > {atol:.0e}"


# -- forward ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3, 32])
def test_forward_matches_reference_random(channels, render):
    gaussians, camera = random_scene(400, channels, seed=channels)
    background = torch.rand(channels, generator=torch.Generator().manual_seed(7))
    got = render(gaussians, camera, background)
    want = rasterize_tiles(gaussians, camera, background)
    assert_renders_match(got, want)
    assert got.features.shape == (1, channels, H, W)
    assert 0.2 < got.alpha.mean().item() < 0.999  # the scene covers part of the image


@pytest.mark.parametrize("channels", [3, 32])
def test_forward_matches_reference_head(channels, render):
    gaussians, _, background = head_scene(3000, 64, channels, seed=1)
    camera = Camera.frontal(0.6, 30.0, 64, 56)  # not a multiple of the tile size
    got = render(gaussians, camera, background)
    want = rasterize_tiles(gaussians, camera, background)
    assert_renders_match(got, want)
    assert got.alpha.max().item() > 0.99  # the head is opaque in the middle


def test_forward_batch_of_two_cameras(render):
    gaussians, camera = random_scene(300, 4, seed=3, batch=2)
    camera = Camera(
        torch.cat([camera.world_to_camera[:1], turned(camera, 25.0).world_to_camera[1:]]),
        camera.intrinsics,
        W,
        H,
    )
    background = torch.tensor([0.1, 0.5, 0.9, 0.3])
    got = render(gaussians, camera, background)
    assert_renders_match(got, rasterize_tiles(gaussians, camera, background))
    # each camera alone gives the same image as its row of the batch
    for b in range(2):
        one = Gaussians(*(t[b : b + 1] for t in gaussians.tensors().values()))
        view = Camera(camera.world_to_camera[b : b + 1], camera.intrinsics[b : b + 1], W, H)
        alone = render(one, view, background)
        assert torch.equal(alone.features[0], got.features[b])
    assert not torch.allclose(got.features[0], got.features[1])  # the two views differ


def test_forward_broadcasts_one_scene_to_many_cameras():
    gaussians, camera = random_scene(200, 3, seed=4)
    cameras = Camera(
        torch.cat([camera.world_to_camera, turned(camera, -20.0).world_to_camera]),
        camera.intrinsics.expand(2, 3, 3),
        W,
        H,
    )
    got = rasterize_cpu(gaussians, cameras)
    assert got.features.shape == (2, 3, H, W)
    assert_renders_match(got, rasterize_tiles(gaussians, cameras))


def test_early_termination(render):
    """A stack of opaque layers: most pixels stop at T <= 1e-4 before reaching the back layers."""
    n_layers, per_layer = 12, 60
    g = torch.Generator().manual_seed(5)
    xy = (torch.rand(n_layers * per_layer, 2, generator=g) - 0.5) * 0.9
    z = torch.linspace(-0.3, 0.3, n_layers).repeat_interleave(per_layer)[:, None]
    n = n_layers * per_layer
    gaussians = Gaussians(
        means=torch.cat([xy, z], 1)[None],
        quats=torch.tensor([1.0, 0, 0, 0]).expand(1, n, 4),
        scales=torch.full((1, n, 3), 0.08),
        opacities=torch.full((1, n), 0.99),
        features=torch.rand(1, n, 3, generator=g),
    )
    camera = Camera.frontal(2.5, 30.0, W, H)
    got = render(gaussians, camera)
    assert_renders_match(got, rasterize_tiles(gaussians, camera))
    stopped = (1.0 - got.alpha) <= 1e-3  # pixels whose next Gaussian would have crossed T_MIN
    assert stopped.float().mean() > 0.5


def test_float64_input_gives_float64_output():
    gaussians, camera = random_scene(100, 3, seed=6)
    double = Gaussians(*(t.double() for t in gaussians.tensors().values()))
    got = rasterize_cpu(double, camera)
    assert got.features.dtype == torch.float64
    assert_renders_match(got, rasterize_cpu(gaussians, camera), atol=1e-6)


def test_numba_projection_matches_torch_projection():
    """Renders without gradients use the numba ``project`` kernel instead of ``project_gaussians``."""
    from gshead.plugins.rasterizers import _cpu_kernels as K
    from gshead.plugins.rasterizers._projection import project_gaussians

    gaussians, camera = random_scene(500, 3, seed=8)
    means = gaussians.means.clone()
    means[0, :40, 2] += 3.0  # behind the camera (camera at z = 2.5 looking down -z)
    means[0, 40:80, 0] += 5.0  # far off to the side: culled
    quats = gaussians.quats.clone()
    quats[0, 80:90] = 0.0  # zero quaternion: identity rotation
    camera = turned(camera, 10.0)
    want = project_gaussians(means, quats, gaussians.scales, camera.world_to_camera, camera.intrinsics, W, H)
    means2d, conics, depths, valid = K.project(
        means[0].numpy(), quats[0].numpy(), gaussians.scales[0].numpy(),
        camera.world_to_camera[0].numpy(), camera.intrinsics[0].numpy(), W, H,
        np.float32(0.01), np.float32(0.3),
    )  # fmt: skip
    assert torch.equal(torch.from_numpy(valid), want.valid[0])
    assert not want.valid[0, :80].any() and want.valid[0, 80:].float().mean() > 0.9
    v = want.valid[0]
    torch.testing.assert_close(torch.from_numpy(means2d)[v], want.means2d[0][v], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(torch.from_numpy(conics)[v], want.conics[0][v], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(depths), want.depths[0], rtol=1e-6, atol=1e-6)


def test_with_and_without_gradients_render_the_same():
    gaussians, camera = random_scene(300, 3, seed=9)
    with torch.no_grad():
        plain = rasterize_cpu(gaussians, camera)
    means = gaussians.means.clone().requires_grad_(True)
    tracked = rasterize_cpu(gaussians.replace(means=means), camera)
    assert tracked.features.requires_grad and not plain.features.requires_grad
    assert_renders_match(plain, tracked, atol=1e-5)


# -- gradients ----------------------------------------------------------------------------------------
def _grads(fn, gaussians, camera, background, seed=11):
    leaves = [t.detach().clone().requires_grad_(True) for t in gaussians.tensors().values()]
    bg = background.detach().clone().requires_grad_(True)
    render = fn(Gaussians(*leaves), camera, bg)
    g = torch.Generator().manual_seed(seed)
    loss = (
        (render.features * torch.randn(render.features.shape, generator=g)).sum()
        + (render.alpha * torch.randn(render.alpha.shape, generator=g)).sum()
        + (render.depth * torch.randn(render.depth.shape, generator=g)).sum()
    )
    loss.backward()
    return dict(zip(["means", "quats", "scales", "opacities", "features"], [t.grad for t in leaves])) | {
        "background": bg.grad
    }


@pytest.mark.parametrize("scene", ["random", "opaque"])
def test_gradients_match_reference_autograd(scene, render):
    gaussians, camera = random_scene(80, 3, seed=12, batch=2)
    if scene == "opaque":  # many alphas clamped at 0.999 and early stops
        gaussians = gaussians.replace(opacities=torch.full_like(gaussians.opacities, 1.0))
    camera = Camera(
        torch.cat([camera.world_to_camera[:1], turned(camera, 15.0).world_to_camera[1:]]),
        camera.intrinsics,
        W,
        H,
    )
    background = torch.tensor([0.2, 0.4, 0.6])
    got = _grads(render, gaussians, camera, background)
    want = _grads(rasterize_tiles, gaussians, camera, background)
    for name, ref in want.items():
        scale = ref.abs().max().item()
        assert scale > 0, name  # the loss depends on every input
        torch.testing.assert_close(got[name], ref, rtol=1e-3, atol=1e-3 * scale, msg=name)


def test_gradient_flows_to_every_visible_gaussian():
    gaussians, camera = random_scene(50, 2, seed=13)
    features = gaussians.features.clone().requires_grad_(True)
    rasterize_cpu(gaussians.replace(features=features), camera).features.sum().backward()
    assert (features.grad.abs().sum(-1) > 0).float().mean() > 0.5



# -- the two forward kernels ---------------------------------------------------------------------------
def _binned(gaussians, camera):
    """The numba binning of a [1, N] scene: the arguments both compositing kernels take."""
    from gshead.plugins.rasterizers import _cpu_kernels as K
    from gshead.plugins.rasterizers.cpu import _numpy, _project_no_grad

    proj = _project_no_grad(gaussians, camera, 0.01)
    tables = K.prepare(
        _numpy(proj.means2d[0]), _numpy(proj.conics[0]), _numpy(gaussians.opacities[0]),
        _numpy(proj.depths[0]), _numpy(proj.valid[0]), camera.width, camera.height,
    )  # fmt: skip
    return tables


@pytest.mark.parametrize(("channels", "width", "height", "threads"), [(1, 70, 45, 1), (5, 64, 64, 2), (64, 33, 50, 3)])
def test_native_and_numba_kernels_agree(channels, width, height, threads):
    """Same outputs, including the per-pixel count of pairs up to the last blended one, which the
    shared numba backward relies on (partial tiles, channel counts not a multiple of 8)."""
    if why := _cpu_native.unavailable(channels):
        pytest.skip(why)
    from gshead.plugins.rasterizers import _cpu_kernels as K

    gaussians, _, background = head_scene(4000, 64, channels, seed=channels)
    camera = Camera.frontal(0.6, 30.0, width, height)
    tile_start, ids, params, pbox = _binned(gaussians, camera)
    inputs = (params, pbox, gaussians.features[0].numpy(), background.numpy(), tile_start, ids, width, height, threads)
    outputs = {}
    for name, kernel in (("numba", K.composite), ("native", _cpu_native.composite)):
        planes = (
            np.full((channels, height, width), np.nan, np.float32),
            *(np.full((height, width), np.nan, np.float32) for _ in range(2)),
            np.full((height, width), -1, np.int32),
            np.full((height, width), np.nan, np.float32),
        )
        kernel(*inputs, *planes)
        outputs[name] = planes
    for got, want in zip(outputs["native"], outputs["numba"]):
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
    np.testing.assert_array_equal(outputs["native"][3], outputs["numba"][3])
    assert outputs["native"][1].max() > 0.99  # the scene really covers pixels


@pytest.mark.parametrize(("channels", "width", "height"), [(1, 70, 45), (5, 64, 64), (64, 33, 50)])
def test_native_and_numba_backwards_agree(channels, width, height):
    """Gradients through the compiled forward + backward match the numba pair's on a dense head
    scene (partial tiles, channel counts not a multiple of 8), up to float summation order."""
    if why := _cpu_native.unavailable(channels):
        pytest.skip(why)
    gaussians, _, background = head_scene(4000, 64, channels, seed=channels + 1)
    camera = Camera.frontal(0.6, 30.0, width, height)
    grads = {kernel: _grads(functools.partial(rasterize_cpu, kernel=kernel), gaussians, camera, background)
             for kernel in ("native", "numba")}  # fmt: skip
    for name, want in grads["numba"].items():
        scale = want.abs().max().item()
        assert scale > 0, name
        torch.testing.assert_close(grads["native"][name], want, rtol=1e-3, atol=1e-4 * scale, msg=name)


def test_native_kernel_refuses_what_it_cannot_do(monkeypatch):
    gaussians, camera = random_scene(50, 65, seed=18)
    if _cpu_native.unavailable() is None:  # built: 65 channels are over its limit, auto falls back to numba
        assert_renders_match(rasterize_cpu(gaussians, camera), rasterize_tiles(gaussians, camera))
        with pytest.raises(GsheadError, match="at most 64 channels") as info:
            rasterize_cpu(gaussians, camera, kernel="native")
        assert "\n" not in str(info.value)
    monkeypatch.setattr(_cpu_native, "unavailable", lambda channels=1: "the compiled kernel was not built")
    small = gaussians.replace(features=gaussians.features[..., :3])
    with pytest.raises(GsheadError, match="kernel 'native' cannot run: the compiled kernel was not built"):
        rasterize_cpu(small, camera, kernel="native")
    assert_renders_match(rasterize_cpu(small, camera), rasterize_tiles(small, camera))  # auto: numba
    with pytest.raises(GsheadError, match="unknown kernel 'fast'"):
        rasterize_cpu(small, camera, kernel="fast")

# -- degenerate inputs --------------------------------------------------------------------------------
def test_zero_gaussians_render_the_background(render):
    gaussians, camera = random_scene(0, 3)
    background = torch.tensor([0.1, 0.2, 0.3])
    got = render(gaussians, camera, background)
    assert torch.equal(got.features[0], background[:, None, None].expand(3, H, W))
    assert torch.count_nonzero(got.alpha) == 0 and torch.count_nonzero(got.depth) == 0


def test_all_behind_the_camera(render):
    gaussians, camera = random_scene(100, 3, seed=14)
    behind = gaussians.replace(means=gaussians.means + torch.tensor([0.0, 0.0, 10.0]))  # camera at z=2.5
    means = behind.means.clone().requires_grad_(True)
    got = render(behind.replace(means=means), camera)
    assert torch.count_nonzero(got.alpha) == 0
    got.features.sum().backward()
    assert torch.count_nonzero(means.grad) == 0


def test_huge_scales_cover_the_image(render):
    gaussians, camera = random_scene(20, 3, seed=15)
    big = gaussians.replace(scales=torch.full_like(gaussians.scales, 50.0))
    got = render(big, camera)
    assert_renders_match(got, rasterize_tiles(big, camera))
    assert got.alpha.min().item() > 0.5


def test_zero_scales_still_draw_a_low_pass_dot(render):
    gaussians, camera = random_scene(100, 3, seed=16)
    dots = gaussians.replace(scales=torch.zeros_like(gaussians.scales))
    got = render(dots, camera)
    assert_renders_match(got, rasterize_tiles(dots, camera))
    assert 0 < got.alpha.mean().item() < 0.5


@pytest.mark.parametrize("field", ["means", "quats", "scales", "opacities", "features"])
@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_input_is_a_one_line_error(field, bad):
    gaussians, camera = random_scene(30, 3)
    tensor = getattr(gaussians, field).clone()
    tensor.view(-1)[5] = bad
    with pytest.raises(GsheadError, match=f"Gaussians.{field}") as info:
        rasterize_cpu(gaussians.replace(**{field: tensor}), camera)
    assert "\n" not in str(info.value)


def test_bad_background_shape():
    gaussians, camera = random_scene(10, 3)
    with pytest.raises(ShapeError, match="background"):
        rasterize_cpu(gaussians, camera, torch.zeros(4))


# -- component ----------------------------------------------------------------------------------------
def test_registered_and_built_through_the_registry():
    registry = Registry(builtin=["gshead.plugins.rasterizers.cpu"], autoload=False)
    spec = registry.get("rasterizer", "cpu")
    assert spec.config_class is CpuRasterizerConfig
    rasterizer = spec.build(CpuRasterizerConfig(near_plane=0.5), BuildContext(feature_channels=3))
    assert isinstance(rasterizer, CpuRasterizer) and isinstance(rasterizer, torch.nn.Module)
    gaussians, camera = random_scene(100, 3, seed=17)
    assert_renders_match(rasterizer(gaussians, camera), rasterize_tiles(gaussians, camera, near=0.5))


def test_config_refuses_unknown_fields():
    with pytest.raises(ValueError):
        CpuRasterizerConfig(tile=8)


def test_importing_compiles_nothing():
    code = (
        "import sys, gshead.plugins.rasterizers.cpu, gshead.plugins.rasterizers.auto; "
        "assert 'numba' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
