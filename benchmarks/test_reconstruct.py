"""Reconstruction: ``Pipeline.reconstruct(image)`` (tracker, encoder, lifter, the driver's rig) once
per portrait, every shipped pipeline; then the same pipeline with its encoder swept over sizes
(``BenchSettings.encoder_sizes``, DINOv2 variants on ``gagavatar-anny``) to show that reconstruction
time grows with the encoder (issue #5: reported as a table, asserted as an order in both modes; the
steps are 3-4x in encoder work, far beyond machine noise)."""

from __future__ import annotations

import pytest
from conftest import DEVICES, PIPELINE_NAMES, REPO, SETTINGS, build, describe, record_fps, record_row

from gshead.benchmarking import parameter_counts, pipeline_config, synchronized

_by_size: dict[str, tuple[int, float]] = {}  # encoder variant -> (parameters, median seconds)


@pytest.mark.benchmark(group="reconstruct")
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", PIPELINE_NAMES)
def test_reconstruct(benchmark, name, device):
    built = build(name, device)
    pipe = built.pipeline
    benchmark.group = f"reconstruct ({device})"
    describe(benchmark, built, source_size=pipe.config.source_size, gaussians=built.gaussian_count)
    avatar = benchmark.pedantic(
        synchronized(pipe.reconstruct, device),
        args=(built.image,),
        rounds=SETTINGS.reconstruct_rounds,
        iterations=1,
        warmup_rounds=0,
    )
    assert avatar.static.count == built.avatar.static.count
    median = record_fps(benchmark)
    if median is not None:
        record_row(
            "reconstruction (median)",
            {
                "pipeline": name,
                "device": device,
                "encoder": built.components()["encoder"],
                "encoder parameters": built.counts["encoder"],
                "s": median,
            },
        )


@pytest.mark.benchmark(group="reconstruct")
@pytest.mark.parametrize("variant", SETTINGS.encoder_sizes)
def test_reconstruct_by_encoder_size(benchmark, variant):
    from gshead.benchmarking import portrait_crop
    from gshead.core.pipeline import Pipeline

    data = pipeline_config(REPO / SETTINGS.encoder_size_pipeline)
    data["encoder"] = {**data["encoder"], "variant": variant}
    if "weights" in data["encoder"]:
        data["encoder"]["weights"] = None  # random weights: one checkpoint cannot fit every variant
    pipe = Pipeline.from_dict(data)
    image = portrait_crop(pipe)
    counts = parameter_counts(pipe)
    benchmark.group = "reconstruct by encoder size (cpu)"
    benchmark.extra_info.update(
        pipeline=SETTINGS.encoder_size_pipeline,
        encoder_variant=variant,
        parameters=counts,
        mode=SETTINGS.mode,
    )
    pipe.reconstruct(image)  # warm-up (first-call allocations, numba kernels)
    benchmark.pedantic(pipe.reconstruct, args=(image,), rounds=SETTINGS.reconstruct_rounds, iterations=1)
    median = record_fps(benchmark)
    if median is not None:
        _by_size[variant] = (counts["encoder"], median)
        record_row(
            "reconstruction by encoder size",
            {
                "pipeline": SETTINGS.encoder_size_pipeline,
                "encoder": f"{data['encoder']['name']} {variant}",
                "encoder parameters": counts["encoder"],
                "s": median,
            },
        )


@pytest.mark.benchmark(group="reconstruct")  # a check on the stage's results, not a benchmark itself
def test_reconstruction_grows_with_encoder_size():
    """Medians of ``test_reconstruct_by_encoder_size`` increase with the encoder's parameters."""
    if len(_by_size) < len(SETTINGS.encoder_sizes):
        pytest.skip("needs every test_reconstruct_by_encoder_size run, with --benchmark-enable")
    ordered = sorted(_by_size.items(), key=lambda item: item[1][0])
    times = [median for _, (_, median) in ordered]
    assert times == sorted(times), "reconstruction time does not grow with encoder size: " + ", ".join(
        f"{v} {1e3 * t:.0f} ms" for v, (_, t) in ordered
    )
