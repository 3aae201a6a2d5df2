"""The driver alone: ``driver.drive(avatar, params)`` per frame (the rig posed for one frame of the
demo motion), every shipped pipeline. No rasterization, no refinement; ``extra_info`` holds the
driver's parameter count and the dynamic Gaussians it moves."""

from __future__ import annotations

import itertools

import pytest
import torch
from conftest import DEVICES, PIPELINE_NAMES, SETTINGS, build, describe, record_fps, record_row, rounds_for

from gshead.benchmarking import synchronized


@pytest.mark.benchmark(group="drive")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_drive(benchmark, name, device):
    built = build(name, device)
    avatar, driver = built.avatar, built.pipeline.driver
    # As drive_frames does: the avatar's identity replaces the frame's.
    frames = itertools.cycle([f.replace(identity=avatar.source.identity) for f in built.frames])

    def drive():
        with torch.no_grad():
            return driver.drive(avatar, next(frames))

    benchmark.group = f"drive ({device})"
    describe(benchmark, built, gaussians=avatar.rig.dynamic.count, driver=built.components()["driver"])
    posed = benchmark.pedantic(
        synchronized(drive, device),
        rounds=rounds_for(name),
        iterations=1,
        warmup_rounds=SETTINGS.warmup_rounds,
    )
    assert posed.count == avatar.rig.dynamic.count
    median = record_fps(benchmark)
    if median is not None:
        record_row(
            "driver alone (median per frame)",
            {
                "pipeline": name,
                "device": device,
                "driver": built.components()["driver"],
                "parameters": built.counts["driver"],
                "dynamic Gaussians": avatar.rig.dynamic.count,
                "ms": 1e3 * median,
            },
        )
