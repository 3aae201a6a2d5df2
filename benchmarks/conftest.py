"""Shared fixtures of the benchmark suite: mode, built pipelines, devices, result tables.

    make bench-quick                       # GSHEAD_BENCH=quick (the default; what CI runs)
    make bench                             # GSHEAD_BENCH=full, saved and compared with the baseline
    GSHEAD_BENCH=full python -m pytest benchmarks --benchmark-enable -k separated-cpu

The repository's pytest options disable benchmarks (``--benchmark-disable``): without
``--benchmark-enable`` every benchmark runs once as a smoke test and no target is asserted.
Modes (``gshead.benchmarking.MODES``): quick runs single-threaded, small sizes, few rounds, and
asserts only ratios; full runs the issues' sizes with all threads and asserts their targets.

Stages, one file and one benchmark group each (``@pytest.mark.benchmark(group=STAGE)``, refined at
run time with the scene or resolution): ``rasterize``, ``drive``, ``refine``, ``reconstruct``,
``end-to-end``. Pipelines are the shipped ``configs/`` YAMLs with random weights, built once per
session per device (``build``). Quick mode swaps their encoders for the ``tiny`` variant: driving
does not depend on the encoder (``test_driving_time_independent_of_encoder`` checks exactly that)
and the real encoders' reconstruction time is measured by ``test_reconstruct_by_encoder_size``.
Scene builders live in ``gshead.benchmarking``. Rows added with ``record_row(table, row)`` are
printed as markdown tables at the end of the run (parameter counts per component, reconstruction
time by encoder size, FPS).
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from gshead.benchmarking import (
    SCENES,  # noqa: F401  (re-exported: ``from conftest import SCENES``)
    BenchSettings,
    Scene,
    bench_settings,
    head_scene,  # noqa: F401
    markdown_table,
    parameter_counts,
    pipeline_config,
    portrait_crop,
    to_device,
    with_tiny_encoder,
)

REPO = Path(__file__).resolve().parents[1]
STAGES = ("rasterize", "drive", "refine", "reconstruct", "end-to-end")

SETTINGS: BenchSettings = bench_settings()

# name -> (YAML relative to the repository, slot overrides, rounds divisor for heavy pipelines)
PIPELINES: dict[str, tuple[str, dict[str, Any], int]] = {
    "default": ("gshead/configs/default.yaml", {}, 1),
    "reference": ("configs/reference.yaml", {}, 1),
    "separated-cpu": ("configs/separated-cpu.yaml", {}, 1),
    "gagavatar-anny": ("configs/gagavatar-anny.yaml", {}, 1),
}
if SETTINGS.include_official_gagavatar:
    # GAGAvatar's published sizes. Its head model is FLAME; without a FLAME file the anny head
    # stands in (4,538 instead of 5,023 expression Gaussians; everything else as published).
    _head = {} if os.environ.get("GSHEAD_FLAME_PATH") else {"headmodel": {"name": "anny-head"}}
    PIPELINES["gagavatar"] = ("configs/gagavatar.yaml", _head, 4)

PIPELINE_NAMES = tuple(PIPELINES)

DEVICES = (
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
)

_TABLES: dict[str, list[dict[str, Any]]] = defaultdict(list)
_TABLE_COLUMNS: dict[str, list[str]] = {}


def record_row(table: str, row: dict[str, Any]) -> None:
    """Add ``row`` to the markdown ``table`` printed at the end of the run (columns in first-seen order)."""
    _TABLES[table].append(row)
    columns = _TABLE_COLUMNS.setdefault(table, [])
    columns.extend(k for k in row if k not in columns)


def median_of(benchmark) -> float | None:
    """The benchmark's median in seconds; None when benchmarks are disabled (smoke run)."""
    stats = getattr(benchmark, "stats", None)
    return stats.stats.median if stats is not None else None


def rounds_for(name: str) -> int:
    """Timed rounds for pipeline ``name`` (heavy pipelines get fewer)."""
    return max(3, SETTINGS.rounds // PIPELINES[name][2])


@dataclass
class Built:
    """A pipeline built from a shipped config, one avatar reconstructed from the test portrait, and
    driving frames (the demo motion), all on ``device``."""

    name: str
    device: str
    pipeline: Any  # gshead.core.pipeline.Pipeline
    image: torch.Tensor  # [1, 3, S, S]
    avatar: Any  # gshead.core.types.Avatar
    frames: list  # HeadParams [1] each
    counts: dict[str, int]  # parameters per component kind

    @property
    def gaussian_count(self) -> int:
        """Gaussians rendered per frame: the avatar's static ones plus the rig's dynamic ones."""
        return self.avatar.static.count + self.avatar.rig.dynamic.count

    def components(self) -> dict[str, str]:
        c = self.pipeline.config
        return {
            kind: getattr(c, kind).name for kind in ("encoder", "lifter", "driver", "rasterizer", "refiner")
        }

    def session(self, render_size: int, refiner: dict | None = None):
        """A driving session at ``render_size``², with the pipeline's refiner or one built from the
        ``refiner`` slot (e.g. ``{"name": "identity"}``) in its place, rasterizing at the
        pipeline's ``raster_size`` as ``Pipeline.session`` does."""
        from gshead.core.config import validate_pipeline
        from gshead.core.pipeline import DrivingSession, build_component

        pipe = self.pipeline
        module = pipe.refiner
        if refiner is not None:
            data = pipe.config.model_dump(mode="json")
            data["refiner"] = refiner
            config = validate_pipeline(data, pipe.registry, source="benchmark")
            module = build_component(config, "refiner", pipe.context, pipe.registry)
            if isinstance(module, torch.nn.Module):
                module.to(self.device)
        return DrivingSession(
            self.avatar,
            pipe.driver,
            pipe.rasterizer,
            module,
            render_size=render_size,
            forbidden=pipe.reconstruction_types(),
            raster_size=pipe.config.raster_size,
        )


_BUILT: dict[tuple[str, str], Built] = {}


def _encoder_label(slot: dict[str, Any]) -> str:
    variant = slot.get("variant", slot.get("size"))
    return f"{slot['name']} {variant}" if variant else slot["name"]


def build(name: str, device: str = "cpu") -> Built:
    """``PIPELINES[name]`` built on ``device`` (cached for the session)."""
    key = (name, device)
    if key not in _BUILT:
        from gshead.io.motion import demo_motion
        from gshead.core.pipeline import Pipeline
        path, overrides, _ = PIPELINES[name]
        data = pipeline_config(REPO / path, **overrides)
        if SETTINGS.tiny_encoders:
            data = with_tiny_encoder(data)
        pipe = Pipeline.from_dict(data)
        to_device(pipe, device)
        image = portrait_crop(pipe, device)
        avatar = pipe.reconstruct(image)
        motion = demo_motion(pipe.head_model, 40).to(device)
        frames = [motion.select(slice(i, i + 1)) for i in range(motion.batch_size)]
        counts = parameter_counts(pipe)
        _BUILT[key] = Built(name, device, pipe, image, avatar, frames, counts)
        record_row(
            "parameters per component",
            {
                "pipeline": name,
                "encoder variant": _encoder_label(data["encoder"]),
                **{k: counts[k] for k in ("encoder", "lifter", "driver", "refiner")},
                "driving (driver + refiner)": counts["driver"] + counts["refiner"],
                "static Gaussians": avatar.static.count,
                "dynamic Gaussians": avatar.rig.dynamic.count,
            },
        )
    return _BUILT[key]


@pytest.fixture(scope="session", autouse=True)
def _threads():
    """Torch and numba threads as the mode says (``BenchSettings.threads``), restored afterwards."""
    if SETTINGS.threads is None:
        yield
        return
    import numba

    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(SETTINGS.threads)
    numba.set_num_threads(min(SETTINGS.threads, numba.config.NUMBA_NUM_THREADS))
    yield
    torch.set_num_threads(before[0])
    numba.set_num_threads(before[1])


@pytest.fixture(scope="session")
def settings() -> BenchSettings:
    return SETTINGS


@pytest.fixture(scope="session", params=sorted(SETTINGS.scenes))
def scene(request) -> Scene:
    """The rasterizer scenes of the mode (full: ``SCENES`` A and B; quick: a small one)."""
    count, size, channels = SETTINGS.scenes[request.param]
    return Scene.build(request.param, count, size, channels)


def describe(benchmark, built: Built, **extra: Any) -> None:
    """Common ``extra_info``: pipeline, device, component names, parameter counts."""
    benchmark.extra_info.update(
        pipeline=built.name,
        device=built.device,
        components=built.components(),
        parameters=built.counts,
        torch_threads=torch.get_num_threads(),
        mode=SETTINGS.mode,
        **extra,
    )


def record_fps(benchmark) -> float | None:
    """Store ``fps`` (1 / median) in ``extra_info``; returns the median in seconds (None if disabled)."""
    median = median_of(benchmark)
    if median is not None:
        benchmark.extra_info["fps"] = round(1.0 / median, 2)
        benchmark.extra_info["median_ms"] = round(1e3 * median, 3)
    return median


def pytest_benchmark_update_machine_info(config, machine_info):
    """Torch and numba versions and threads, the benchmark mode, and the GPU when there is one."""
    import numba

    machine_info["torch"] = torch.__version__
    # The mode's thread count (the session fixture may already have restored the defaults here).
    machine_info["torch_threads"] = SETTINGS.threads or torch.get_num_threads()
    machine_info["numba"] = numba.__version__
    machine_info["numba_threads"] = SETTINGS.threads or numba.get_num_threads()
    machine_info["gshead_bench_mode"] = SETTINGS.mode
    if torch.cuda.is_available():
        machine_info["gpu"] = torch.cuda.get_device_name(0)
        machine_info["cuda"] = torch.version.cuda
    else:
        machine_info["gpu"] = None


def pytest_terminal_summary(terminalreporter):
    if not _TABLES:
        return
    terminalreporter.section(f"gshead benchmark tables (mode: {SETTINGS.mode})")
    for name, rows in _TABLES.items():
        terminalreporter.write_line(f"\n{name}\n")
        terminalreporter.write_line(markdown_table(rows, _TABLE_COLUMNS[name]))
