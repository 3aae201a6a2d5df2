"""The ``auto`` rasterizer: it builds ``cpu`` and ``gsplat`` through the registry, passes its own
settings on to them (so ``kernel`` is honoured) and dispatches on the Gaussians' device.

The GPU test is marked ``gpu`` and skipped when CUDA is unavailable.
"""

from __future__ import annotations

import pytest
import torch

from gshead.core.components import BuildContext
from gshead.core.config import RasterizerConfig
from gshead.core.errors import GsheadError, UnknownComponentError
from gshead.core.registry import Registry
from gshead.core.types import Camera, Gaussians
from gshead.plugins.rasterizers import _cpu_kernels, _cpu_native
from gshead.plugins.rasterizers.auto import AutoRasterizer, AutoRasterizerConfig
from gshead.plugins.rasterizers.cpu import CpuRasterizerConfig, rasterize_cpu
from gshead.plugins.rasterizers.gsplat import GsplatRasterizerConfig

W, H = 48, 40
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
MODULES = ("cpu", "gsplat", "auto")


def scene(n: int = 300, channels: int = 5, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    gaussians = Gaussians(
        means=(torch.rand(batch, n, 3, generator=g) - 0.5) * torch.tensor([1.0, 1.0, 0.6]),
        quats=torch.randn(batch, n, 4, generator=g),
        scales=torch.rand(batch, n, 3, generator=g) * 0.06 + 0.005,
        opacities=torch.rand(batch, n, generator=g) * 0.95 + 0.05,
        features=torch.rand(batch, n, channels, generator=g),
    )
    return gaussians, Camera.frontal(2.5, 30.0, W, H, batch_size=batch)


def registry(*names: str) -> Registry:
    return Registry(builtin=[f"gshead.plugins.rasterizers.{n}" for n in names], autoload=False)


def build_auto(reg: Registry, **fields) -> AutoRasterizer:
    spec = reg.get("rasterizer", "auto")
    return spec.build(AutoRasterizerConfig(**fields), BuildContext(feature_channels=3, registry=reg))


# -- the config -------------------------------------------------------------------------------
def test_auto_has_its_own_config_with_the_fields_it_passes_on():
    assert issubclass(AutoRasterizerConfig, RasterizerConfig)
    assert not issubclass(AutoRasterizerConfig, CpuRasterizerConfig)
    assert set(AutoRasterizerConfig.model_fields) == {"name", "near_plane", "kernel"}
    auto_fields, cpu_fields = AutoRasterizerConfig.model_fields, CpuRasterizerConfig.model_fields
    for name in ("near_plane", "kernel"):  # same type, default and constraints as the cpu's
        assert auto_fields[name].annotation == cpu_fields[name].annotation, name
        assert auto_fields[name].default == cpu_fields[name].default, name
        assert auto_fields[name].metadata == cpu_fields[name].metadata, name
    assert auto_fields["near_plane"].metadata == GsplatRasterizerConfig.model_fields["near_plane"].metadata
    # the docs say where each field goes
    assert "cpu" in auto_fields["kernel"].description and "gsplat" in auto_fields["kernel"].description
    assert (
        "cpu" in auto_fields["near_plane"].description and "gsplat" in auto_fields["near_plane"].description
    )


def test_every_field_reaches_the_rasterizer_it_is_documented_for():
    reg = registry(*MODULES)
    auto = build_auto(reg, near_plane=0.5, kernel="numba")
    assert auto.cpu_rasterizer.config == CpuRasterizerConfig(near_plane=0.5, kernel="numba")
    assert auto.gsplat_rasterizer.config == GsplatRasterizerConfig(near_plane=0.5)
    # built through the registry it was given: the registered factories, not imported classes
    assert type(auto.cpu_rasterizer) is reg.get("rasterizer", "cpu").factory
    assert type(auto.gsplat_rasterizer) is reg.get("rasterizer", "gsplat").factory
    assert not list(auto.parameters()) and not auto.state_dict()  # still no weights


def test_a_registry_without_cpu_or_gsplat_fails_at_build_time_naming_it():
    with pytest.raises(UnknownComponentError, match="unknown rasterizer 'cpu'"):
        build_auto(registry("gsplat", "auto"))
    with pytest.raises(UnknownComponentError, match="unknown rasterizer 'gsplat'"):
        build_auto(registry("cpu", "auto"))


def test_without_a_registry_in_the_context_the_process_wide_one_builds_them():
    auto = AutoRasterizer(AutoRasterizerConfig(kernel="numba"), BuildContext(feature_channels=3))
    assert auto.cpu_rasterizer.config.kernel == "numba"


# -- the kernel is honoured ---------------------------------------------------------------------
def _spy(monkeypatch, module, name: str, calls: list[str]) -> None:
    original = getattr(module, name)

    def spy(*args, **kwargs):
        calls.append(f"{module.__name__.rsplit('.', 1)[-1]}.{name}")
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, spy)


def test_kernel_numba_composites_with_the_numba_kernel(monkeypatch):
    calls: list[str] = []
    _spy(monkeypatch, _cpu_kernels, "composite", calls)
    _spy(monkeypatch, _cpu_native, "composite", calls)
    gaussians, camera = scene(120, 3, seed=2)
    background = torch.tensor([0.1, 0.2, 0.3])
    got = build_auto(registry(*MODULES), kernel="numba")(gaussians, camera, background)
    assert calls == ["_cpu_kernels.composite"]  # one camera, numba's kernel, never the native one
    calls.clear()
    want = rasterize_cpu(gaussians, camera, background, kernel="numba")
    assert calls == ["_cpu_kernels.composite"]
    for field in ("features", "alpha", "depth"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field


def test_kernel_native_is_passed_on_even_where_it_cannot_run(monkeypatch):
    # With kernel 'auto' the cpu rasterizer silently falls back to numba; 'native' must refuse.
    # Before auto passed its kernel on, it rendered here without a word.
    monkeypatch.setattr(_cpu_native, "unavailable", lambda channels=1: "the compiled kernel was not built")
    gaussians, camera = scene(30, 3, seed=3)
    auto = build_auto(registry(*MODULES), kernel="native")
    with pytest.raises(GsheadError, match="kernel 'native' cannot run: the compiled kernel was not built"):
        auto(gaussians, camera)
    build_auto(registry(*MODULES), kernel="auto")(gaussians, camera)  # falls back, renders


def test_kernel_native_composites_with_the_native_kernel(monkeypatch):
    if why := _cpu_native.unavailable(3):
        pytest.skip(why)
    calls: list[str] = []
    _spy(monkeypatch, _cpu_kernels, "composite", calls)
    _spy(monkeypatch, _cpu_native, "composite", calls)
    gaussians, camera = scene(120, 3, seed=4)
    build_auto(registry(*MODULES), kernel="native")(gaussians, camera)
    assert calls == ["_cpu_native.composite"]


# -- dispatch -------------------------------------------------------------------------------------
def test_auto_uses_cpu_for_cpu_tensors():
    gaussians, camera = scene(200, 4, seed=1)
    background = torch.tensor([0.1, 0.2, 0.3, 0.4])
    auto = AutoRasterizer(AutoRasterizerConfig(), BuildContext(feature_channels=4))
    got = auto(gaussians, camera, background)
    want = rasterize_cpu(gaussians, camera, background)
    for field in ("features", "alpha", "depth"):
        assert torch.equal(getattr(got, field), getattr(want, field)), field


def test_near_plane_reaches_the_cpu_path():
    gaussians, camera = scene(200, 3, seed=5)
    got = build_auto(registry(*MODULES), near_plane=2.4)(gaussians, camera)
    want = rasterize_cpu(gaussians, camera, near=2.4)
    assert torch.equal(got.features, want.features)
    assert not torch.equal(got.alpha, rasterize_cpu(gaussians, camera).alpha)  # the plane culls some


@pytest.mark.gpu
@cuda
def test_auto_uses_gsplat_for_cuda_tensors():
    gaussians, camera = scene(100, 3, seed=5)
    auto = AutoRasterizer(AutoRasterizerConfig(), BuildContext(feature_channels=3))
    got = auto(gaussians.to("cuda"), camera.to("cuda"))
    assert got.features.device.type == "cuda"
