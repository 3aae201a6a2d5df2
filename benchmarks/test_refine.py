"""The refiner alone: ``refiner(render)`` on the pipeline's own coarse render of its avatar (the
rasterizer's output for one demo frame), at each of the mode's resolutions. Pipelines whose refiner
is ``identity`` are skipped (nothing to time)."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICES, PIPELINE_NAMES, SETTINGS, build, describe, record_fps, record_row, rounds_for

from gshead.benchmarking import synchronized
from gshead.core.pipeline import drive_frames


@pytest.mark.benchmark(group="refine")
@pytest.mark.parametrize("size", SETTINGS.render_sizes)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_refine(benchmark, name, device, size):
    built = build(name, device)
    refiner = built.pipeline.refiner
    if built.pipeline.config.refiner.name == "identity":
        pytest.skip("identity refiner: nothing to time")
    session = built.session(size)
    with torch.no_grad():
        render, _ = drive_frames(
            built.avatar,
            built.frames[0],
            session.camera,
            built.pipeline.driver,
            built.pipeline.rasterizer,
            refiner,
        )

    def refine():
        with torch.no_grad():
            return refiner(render)

    benchmark.group = f"refine {size}x{size} ({device})"
    describe(
        benchmark,
        built,
        resolution=f"{size}x{size}",
        refiner=built.components()["refiner"],
        channels=render.features.shape[1],
    )
    image = benchmark.pedantic(
        synchronized(refine, device),
        rounds=rounds_for(name),
        iterations=1,
        warmup_rounds=SETTINGS.warmup_rounds,
    )
    assert image.shape == (1, 3, size, size)
    median = record_fps(benchmark)
    if median is not None:
        record_row(
            "refiner alone (median per frame)",
            {
                "pipeline": name,
                "device": device,
                "size": size,
                "refiner": built.components()["refiner"],
                "parameters": built.counts["refiner"],
                "ms": 1e3 * median,
            },
        )
