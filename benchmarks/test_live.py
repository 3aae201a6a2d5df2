"""Live driving (issue #16 item 5): ``gshead.jobs.live.run_live`` on a 256x256 video of the
astronaut (rolled and panned) streamed at its own 25 frames/s, with the embedded default pipeline
(its tracker, driver, rasterizer and refiner; the shipped ``builtin:default`` weights), rendering
256x256. Reported: frames shown and dropped, frames/s after the start-up, latency, and the split
between tracking and rendering; a second run unpaced (nothing dropped) gives the largest rate.

Full mode asserts the issue's target: the paced run keeps up, >= 25 frames/s (within 5%) with at
most 5% of the frames dropped; the unpaced run is reported only. Quick mode (CI) streams fewer frames and asserts only that every frame is
accounted for::

    GSHEAD_BENCH=full python -m pytest benchmarks/test_live.py --benchmark-enable -s
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO, SETTINGS, record_row

pytest.importorskip("mediapipe", reason="needs mediapipe==0.10.21 (the default pipeline's tracker)")

FRAMES = 40 if SETTINGS.mode == "quick" else 200
SIZE = 256
TARGET_FPS = 25.0


@pytest.fixture(scope="module")
def avatar_and_clip(tmp_path_factory):
    from test_tracker_speed import astronaut_video

    from gshead.cli import main
    from gshead.io.media import VideoWriter

    root = tmp_path_factory.mktemp("live")
    avatar = root / "a.safetensors"
    args = ["reconstruct", "example:astronaut", "-o", str(avatar), "--weights", "builtin:default", "-q"]
    assert main(args) == 0
    clip = root / "clip.mp4"
    with VideoWriter(clip, 25, SIZE, SIZE) as writer:
        for frame in astronaut_video(FRAMES):
            writer.write(F.interpolate(frame, size=(SIZE, SIZE), mode="area"))
    return avatar, clip


@pytest.mark.benchmark(group="live")
@pytest.mark.parametrize("paced", [True, False], ids=["paced-25fps", "unpaced"])
def test_live_driving_keeps_up(benchmark, avatar_and_clip, paced):
    from gshead.io.avatar import load_avatar
    from gshead.jobs.live import FileSource, run_live

    avatar, clip = avatar_and_clip
    loaded = load_avatar(avatar)
    assert (REPO / "gshead" / "configs" / "default.yaml").is_file()

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return run_live(loaded, FileSource(clip, realtime=paced), lambda image, stats: None, size=SIZE)

    report = benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    assert report.arrived == FRAMES and report.shown + report.dropped == report.arrived
    record_row(
        f"live driving ({SIZE}x{SIZE}, default pipeline, source 25 frames/s)",
        {
            "run": "paced" if paced else "unpaced",
            "threads": torch.get_num_threads(),
            "shown": report.shown,
            "dropped": report.dropped,
            "frames/s": round(report.fps, 1),
            "latency median ms": round(report.latency_ms_median, 1),
            "latency p95 ms": round(report.latency_ms_p95, 1),
            "tracking ms": round(report.track_ms_median, 1),
            "rendering ms": round(report.render_ms_median, 1),
            "start-up s": round(report.startup_s, 2),
        },
    )
    benchmark.extra_info.update(fps=round(report.fps, 2), dropped=report.dropped, mode=SETTINGS.mode)
    if SETTINGS.mode == "full" and getattr(benchmark, "stats", None) is not None and paced:
        # the target: the stream at its own 25 frames/s is kept up with (the unpaced run, with both
        # stages saturated and the decoder running ahead, is reported only: it shows the headroom)
        assert report.dropped <= 0.05 * report.arrived, report.line()
        assert report.fps >= 0.95 * TARGET_FPS, report.line()
