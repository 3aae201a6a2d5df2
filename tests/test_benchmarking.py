"""The benchmark suite's structure (not its timings): every stage has a benchmark group in both modes,
the scene builder gives the documented counts, the modes and helpers of ``gshead.benchmarking``
behave, and the Makefile has the documented targets. Nothing here times anything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gshead.benchmarking import (
    BACK_PLANE_Z,
    HEAD_RADII,
    MODES,
    SCENES,
    Scene,
    bench_settings,
    head_scene,
    markdown_table,
    parameter_counts,
    synchronized,
    with_tiny_encoder,
)
from gshead.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
STAGES = ("rasterize", "drive", "refine", "reconstruct", "end-to-end", "tracker-speed", "live", "viewer-latency")

_COLLECT = """
import json, sys
import pytest

class Grab:
    groups = {}

    def pytest_collection_modifyitems(self, items):
        for item in items:
            marker = item.get_closest_marker("benchmark")
            self.groups[item.nodeid] = marker.kwargs.get("group") if marker else None

grab = Grab()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "benchmarks"], plugins=[grab])
print("GROUPS=" + json.dumps(grab.groups))
sys.exit(int(code))
"""


def _collect(mode: str) -> dict[str, str | None]:
    env = {**os.environ, "GSHEAD_BENCH": mode}
    out = subprocess.run(
        [sys.executable, "-c", _COLLECT],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("GROUPS="))
    return json.loads(line[len("GROUPS=") :])


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_suite_collects_every_stage_group(mode):
    groups = _collect(mode)
    assert groups, "no benchmark collected"
    # Every benchmark belongs to exactly one of the stages, and every stage has benchmarks.
    assert set(groups.values()) == set(STAGES), groups
    # Each stage lives in its own file.
    for nodeid, group in groups.items():
        assert nodeid.startswith(f"benchmarks/test_{group.replace('-', '_')}.py::"), nodeid
    # The shipped pipelines are benchmarked at the mode's resolutions, with and without refiner.
    sizes = bench_settings(mode).render_sizes
    for name in ("reference", "separated-cpu", "gagavatar-anny"):
        for size in sizes:
            for refiner in ("own", "identity"):
                assert (
                    f"benchmarks/test_end_to_end.py::test_drive_end_to_end[{name}-cpu-{size}-{refiner}]"
                    in groups
                )
        assert f"benchmarks/test_reconstruct.py::test_reconstruct[{name}-cpu]" in groups
    # GPU variants are collected (and skip at run time without CUDA).
    assert "benchmarks/test_drive.py::test_drive[separated-cpu-cuda]" in groups
    official = "benchmarks/test_reconstruct.py::test_reconstruct[gagavatar-cpu]"
    assert (official in groups) == (mode == "full")
    ids = {n.split("[")[1].rstrip("]") for n in groups if "test_cpu_forward[" in n}
    want = set(bench_settings(mode).scenes)
    assert ids == {f"{scene}-{kernel}" for scene in want for kernel in ("native", "numba")}


def test_head_scene_counts_and_layout():
    count, size, channels = 1000, 32, 5
    gaussians, camera, background = head_scene(count, size, channels, seed=3)
    assert gaussians.count == count and gaussians.batch_size == 1 and gaussians.channels == channels
    assert (camera.width, camera.height, camera.batch_size) == (size, size, 1)
    assert background.shape == (channels,)
    means = gaussians.means[0]
    n_back = int(count * 0.2)
    # The first count - n_back lie on the head ellipsoid (radial jitter ~3 %), the rest on the back plane.
    radius = (means[: count - n_back] / torch.tensor(HEAD_RADII)).norm(dim=1)
    assert ((radius > 0.8) & (radius < 1.2)).all()
    assert ((means[count - n_back :, 2] - BACK_PLANE_Z).abs() < 0.06).all()
    assert (means[: count - n_back, 2] > BACK_PLANE_Z + 0.01).all()
    assert torch.allclose(gaussians.quats.norm(dim=-1), torch.ones(1, count), atol=1e-5)
    assert (gaussians.scales > 0).all() and ((gaussians.opacities > 0) & (gaussians.opacities < 1)).all()
    # Deterministic per seed, different across seeds.
    again, _, _ = head_scene(count, size, channels, seed=3)
    other, _, _ = head_scene(count, size, channels, seed=4)
    assert torch.equal(again.means, gaussians.means) and not torch.equal(other.means, gaussians.means)
    # A batch broadcasts the same Gaussians.
    batched, cams, _ = head_scene(count, size, channels, seed=3, batch=2)
    assert (
        batched.batch_size == 2 and cams.batch_size == 2 and torch.equal(batched.means[1], gaussians.means[0])
    )


def test_reference_scenes_are_the_documented_ones():
    assert SCENES == {"A": (50_000, 256, 32), "B": (180_000, 512, 32)}
    scene = Scene.build("A", *SCENES["A"])
    assert scene.gaussians.count == 50_000 and scene.camera.width == 256 and scene.gaussians.channels == 32
    assert scene.label == "A: 50k Gaussians, 256x256, 32 channels"
    # Documented split: the last int(0.2 * count) on the back plane, the rest on the head.
    means = scene.gaussians.means[0]
    assert ((means[40_000:, 2] - BACK_PLANE_Z).abs() < 0.06).all()
    radius = (means[:40_000] / torch.tensor(HEAD_RADII)).norm(dim=1)
    assert ((radius > 0.8) & (radius < 1.2)).all()


@pytest.mark.parametrize("args", [(-1, 8, 3), (10, 0, 3), (10, 8, 0)])
def test_head_scene_rejects_bad_sizes(args):
    with pytest.raises(ConfigError, match="head_scene"):
        head_scene(*args)


def test_modes(monkeypatch):
    monkeypatch.delenv("GSHEAD_BENCH", raising=False)
    monkeypatch.delenv("GSHEAD_BENCH_THREADS", raising=False)
    assert bench_settings().mode == "quick"  # CI's mode is the default
    monkeypatch.setenv("GSHEAD_BENCH", "full")
    full = bench_settings()
    assert full.mode == "full" and full.assert_targets and full.render_sizes == (256, 512)
    assert full.scenes == SCENES and full.contract_tolerance == (0.95, 1.05)
    quick = MODES["quick"]
    assert not quick.assert_targets  # CI machines vary: no absolute targets in quick mode
    lo, hi = quick.contract_tolerance
    assert lo <= 0.95 and hi >= 1.05
    assert full.threads is None and quick.threads == 1
    monkeypatch.setenv("GSHEAD_BENCH_THREADS", "3")
    assert bench_settings().threads == 3 and bench_settings().mode == "full"
    monkeypatch.setenv("GSHEAD_BENCH_THREADS", "0")
    with pytest.raises(ConfigError, match="GSHEAD_BENCH_THREADS: expected a positive integer, got '0'"):
        bench_settings()
    monkeypatch.delenv("GSHEAD_BENCH_THREADS")
    monkeypatch.setenv("GSHEAD_BENCH", "fast")
    with pytest.raises(ConfigError, match="GSHEAD_BENCH: unknown mode 'fast'; expected one of: quick, full"):
        bench_settings()


def test_with_tiny_encoder():
    data = {"encoder": {"name": "webssl", "size": "1b", "weights": "/x"}, "seed": 0}
    out = with_tiny_encoder(data)
    assert out["encoder"] == {"name": "webssl", "size": "tiny", "weights": None}
    assert data["encoder"]["size"] == "1b"  # not modified in place
    plain = {"encoder": {"name": "tiny-conv", "channels": 8}}
    assert with_tiny_encoder(plain) == plain


def test_parameter_counts_match_modules():
    from gshead.core.pipeline import Pipeline
    from gshead.testing import tiny_pipeline

    pipe = Pipeline.from_dict(tiny_pipeline())
    counts = parameter_counts(pipe)
    assert set(counts) == {"headmodel", "encoder", "lifter", "driver", "rasterizer", "refiner", "tracker"}
    assert counts["encoder"] == sum(p.numel() for p in pipe.encoder.parameters()) > 0
    assert counts["rasterizer"] == 0


def test_synchronized_is_transparent_on_cpu():
    def f(x):
        return x + 1

    assert synchronized(f, "cpu") is f


def test_markdown_table():
    table = markdown_table([{"a": 1234, "b": 0.123456}, {"a": 5, "c": "x"}], ["a", "b", "c"])
    assert table.splitlines() == [
        "| a     | b      | c |",
        "|-------|--------|---|",
        "| 1,234 | 0.1235 |   |",
        "| 5     |        | x |",
    ]


def test_makefile_targets():
    text = (REPO / "Makefile").read_text()
    for target in ("test:", "bench:", "bench-quick:", "bench-save:"):
        assert f"\n{target}" in text, target
    assert "--benchmark-compare-fail=median:10%" in text and "--benchmark-autosave" in text
    assert "GSHEAD_BENCH=quick" in text and "GSHEAD_BENCH=full" in text
