"""Rasterizer speed and memory on head-like scenes (``gshead.benchmarking.head_scene``).

    python -m pytest benchmarks/test_rasterize.py --benchmark-enable              # quick scene
    GSHEAD_BENCH=full python -m pytest benchmarks/test_rasterize.py --benchmark-enable

(the repository's pytest options disable benchmarks by default; without ``--benchmark-enable``
each benchmark runs once, as a smoke test). One group per scene (full mode: scenes A and B of issue
#10; quick mode: one small scene): the ``torch-tiles`` reference forward (the baseline), ``cpu``
forward with each compositing kernel (``native``: compiled AVX2, what ``auto`` picks; ``numba``)
and ``cpu`` forward+backward (the default kernel), and ``gsplat`` forward when CUDA is available. ``extra_info``
holds fps, the scene size and the speed-up over the reference measured in the same run; the
speed-up is asserted (full: >= 10x, quick: >= 2x on its small scene); the absolute forward targets
are recorded (``target_ms``, ``meets_target``), not asserted. Peak memory of scene B (full
mode only) is measured in a fresh subprocess from the kernel's resident-set counters (so numba
and torch allocations count too): the peak RSS while rendering (``VmHWM`` reset just before the
render, scene already built) and how much the render added to the RSS it started from.

Targets on the project's 2-core machine: A forward <= 40 ms, B forward <= 200 ms, >= 10x the
reference; B peak memory forward <= 2 GB, forward+backward <= 6 GB.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap

import numba
import pytest
import torch
from conftest import SETTINGS  # pytest put benchmarks/ on sys.path to load conftest.py

from gshead.benchmarking import SCENES, synchronized
from gshead.core.types import Gaussians
from gshead.plugins.rasterizers import _cpu_native
from gshead.plugins.rasterizers.cpu import rasterize_cpu
from gshead.plugins.rasterizers.torch_tiles import rasterize_tiles

pytestmark = pytest.mark.benchmark(group="rasterize")

FORWARD_TARGET_S = {"A": 0.040, "B": 0.200}
"""Issue #10: cpu forward median on this 2-core CPU. Recorded in ``extra_info`` (``target_ms``,
``meets_target``), not asserted: the rasterizer's targets stay as issue #10 set them (a report of the
kernel's progress); what is asserted is the speed-up over the reference measured in the same run."""

_reference_median: dict[str, float] = {}  # scene name -> seconds, filled by the reference benchmark


def _describe(benchmark, scene, rasterizer: str) -> None:
    benchmark.group = f"rasterize scene {scene.label}"
    benchmark.extra_info.update(
        rasterizer=rasterizer,
        gaussians=scene.gaussians.count,
        resolution=f"{scene.camera.width}x{scene.camera.height}",
        channels=scene.gaussians.channels,
        torch_threads=torch.get_num_threads(),
        numba_threads=numba.get_num_threads(),
        mode=SETTINGS.mode,
    )


def _median(benchmark) -> float | None:
    stats = getattr(benchmark, "stats", None)  # None when benchmarks are disabled
    return stats.stats.median if stats is not None else None


def _record_speed(benchmark, scene) -> float | None:
    """Store fps and the speed-up over the reference forward; returns the speed-up (None if unknown)."""
    median = _median(benchmark)
    if median is None:
        return None
    benchmark.extra_info["fps"] = round(1.0 / median, 2)
    reference = _reference_median.get(scene.name)
    if reference is None:
        return None
    speedup = reference / median
    benchmark.extra_info["speedup_vs_reference_forward"] = round(speedup, 1)
    return speedup


def test_reference_forward(benchmark, scene):
    _describe(benchmark, scene, "torch-tiles")
    with torch.no_grad():
        benchmark.pedantic(
            rasterize_tiles,
            args=(scene.gaussians, scene.camera, scene.background),
            rounds=SETTINGS.reference_rounds,
            iterations=1,
        )
    median = _median(benchmark)
    if median is not None:
        _reference_median[scene.name] = median
        benchmark.extra_info["fps"] = round(1.0 / median, 2)


@pytest.mark.parametrize("kernel", ["native", "numba"])
def test_cpu_forward(benchmark, scene, kernel):
    """The ``cpu`` forward with each compositing kernel (``native`` is what ``auto`` picks here)."""
    if kernel == "native" and (why := _cpu_native.unavailable(scene.gaussians.channels)):
        pytest.skip(why)
    _describe(benchmark, scene, f"cpu ({kernel})")
    args = (scene.gaussians, scene.camera, scene.background)
    render = functools.partial(rasterize_cpu, kernel=kernel)
    with torch.no_grad():
        render(*args)  # load (or compile) the kernels outside the timing
        benchmark.pedantic(render, args=args, rounds=SETTINGS.raster_rounds, iterations=1, warmup_rounds=2)
    speedup = _record_speed(benchmark, scene)
    if speedup is not None:
        floor = SETTINGS.min_speedup_vs_reference
        assert speedup >= floor, (
            f"cpu forward is {speedup:.1f}x the torch-tiles reference; expected >= {floor}x"
        )
    median = _median(benchmark)
    if scene.name in FORWARD_TARGET_S and median is not None:
        target = FORWARD_TARGET_S[scene.name]
        benchmark.extra_info.update(target_ms=1e3 * target, meets_target=median <= target)


def _gsplat_unavailable() -> str | None:
    if not torch.cuda.is_available():
        return "needs CUDA"
    from gshead.plugins.rasterizers.gsplat import GsplatRasterizerConfig

    return GsplatRasterizerConfig.unavailable()


@pytest.mark.gpu
def test_gsplat_forward(benchmark, scene):
    reason = _gsplat_unavailable()
    if reason:
        pytest.skip(reason)
    from gshead.plugins.rasterizers.gsplat import rasterize_gsplat

    _describe(benchmark, scene, "gsplat")
    benchmark.extra_info["gpu"] = torch.cuda.get_device_name(0)
    args = (scene.gaussians.to("cuda"), scene.camera.to("cuda"), scene.background.to("cuda"))
    render = synchronized(rasterize_gsplat, "cuda")
    with torch.no_grad():
        render(*args)  # load the CUDA kernels outside the timing
        benchmark.pedantic(render, args=args, rounds=SETTINGS.raster_rounds, iterations=1, warmup_rounds=2)
    _record_speed(benchmark, scene)


def test_cpu_forward_backward(benchmark, scene):
    _describe(benchmark, scene, "cpu")
    leaves = [t.detach().clone().requires_grad_(True) for t in scene.gaussians.tensors().values()]
    gaussians = Gaussians(*leaves)
    g = torch.Generator().manual_seed(0)
    size = (1, scene.gaussians.channels, scene.camera.height, scene.camera.width)
    grad_features = torch.randn(size, generator=g)

    def step():
        for leaf in leaves:
            leaf.grad = None
        render = rasterize_cpu(gaussians, scene.camera, scene.background)
        render.features.backward(grad_features)

    step()
    benchmark.pedantic(step, rounds=max(3, SETTINGS.raster_rounds // 2), iterations=1, warmup_rounds=1)
    assert leaves[0].grad is not None and leaves[0].grad.abs().sum() > 0
    _record_speed(benchmark, scene)


_MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from gshead.benchmarking import head_scene
    from gshead.core.types import Gaussians
    from gshead.plugins.rasterizers.cpu import rasterize_cpu

    def status(field):  # bytes, from /proc/self/status (Linux)
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    def rss_max():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB

    small, cam, bg = head_scene(2000, 64, {channels})
    rasterize_cpu(small, cam, bg).features.sum()  # load the kernels, warm the allocators
    gaussians, camera, background = head_scene({count}, {size}, {channels})
    if {backward}:
        leaves = [t.detach().clone().requires_grad_(True) for t in gaussians.tensors().values()]
        gaussians = Gaussians(*leaves)
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
        f.write("5")
    render = rasterize_cpu(gaussians, camera, background)
    if {backward}:
        render.features.backward(torch.ones_like(render.features))
    print(json.dumps({{"before": before, "peak": status("VmHWM"), "process_peak": rss_max()}}))
    """
)


@pytest.mark.parametrize("mode, limit_gb", [("forward", 2.0), ("forward+backward", 6.0)])
def test_peak_memory_scene_b(mode, limit_gb, record_property):
    if SETTINGS.mode != "full":
        pytest.skip("scene B peak memory: full mode only (GSHEAD_BENCH=full)")
    count, size, channels = SCENES["B"]
    script = _MEMORY_SCRIPT.format(
        count=count,
        size=size,
        channels=channels,
        backward=mode == "forward+backward",
    )
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    peak_gb = result["peak"] / 1e9
    added_gb = (result["peak"] - result["before"]) / 1e9
    record_property("peak_rss_gb", round(peak_gb, 3))
    record_property("added_by_render_gb", round(added_gb, 3))
    print(f"\nscene B {mode}: peak RSS {peak_gb:.2f} GB (render added {added_gb:.2f} GB)")
    assert peak_gb <= limit_gb
