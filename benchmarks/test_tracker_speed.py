"""Tracking (issue #16): the ``mediapipe`` tracker on a 512x512 video of scikit-image's astronaut
moved by a small in-plane roll (+-15 degrees) and pan, through ``gshead.jobs.tracking.track_video``
(face boxes, One-Euro crop filter, batched fit, temporal smoothing).

Reported as the marginal per-frame time, start-up excluded (MediaPipe's graphs and the head model
are built and one frame tracked before timing), split into MediaPipe (face detection + 478-point
landmarks) and the rest (the head-model fit, crops, smoothing). Quick mode tracks 8 frames with the
``procedural`` head; full mode 32 frames with ``anny-head`` through its MediaPipe embedding (the
fit issue #16 measured at 0.10 frames/s) and asserts nothing absolute yet (target: 30 frames/s)::

    GSHEAD_BENCH=full python -m pytest benchmarks/test_tracker_speed.py --benchmark-enable -s
"""

from __future__ import annotations

import math
import time
import warnings

import pytest
import torch
from conftest import SETTINGS, record_row

pytest.importorskip("mediapipe", reason="needs mediapipe==0.10.21 (see gshead.plugins.trackers.mediapipe)")

FRAMES = 8 if SETTINGS.mode == "quick" else 32
HEAD = "procedural" if SETTINGS.mode == "quick" else "anny-head"


def astronaut_video(frames: int, roll_degrees: float = 15.0, pan_pixels: float = 6.0) -> list[torch.Tensor]:
    """Frames [1, 3, 512, 512] of the astronaut rolled about her face by ``roll_degrees`` * sin and
    panned sideways by ``pan_pixels`` * sin (one period over the clip)."""
    import numpy as np
    from PIL import Image
    from skimage.data import astronaut

    image = Image.fromarray(astronaut())
    out = []
    for i in range(frames):
        phase = 2 * math.pi * i / max(frames, 2)
        moved = image.rotate(
            roll_degrees * math.sin(phase),
            resample=Image.BILINEAR,
            center=(235, 115),
            translate=(pan_pixels * math.sin(phase + 1.0), 0),
        )
        out.append(torch.from_numpy(np.asarray(moved).copy()).permute(2, 0, 1)[None].float() / 255)
    return out


def _head(name: str):
    if name == "procedural":
        from gshead.plugins.headmodels.procedural import ProceduralHeadModel

        return ProceduralHeadModel()
    from gshead.plugins.headmodels.anny_head import AnnyHeadConfig, AnnyHeadModel

    return AnnyHeadModel(AnnyHeadConfig(mediapipe_landmarks=True))


@pytest.mark.benchmark(group="tracker-speed")
def test_tracking_per_frame(benchmark):
    from gshead.core.components import BuildContext
    from gshead.jobs.tracking import track_video
    from gshead.plugins.trackers.mediapipe import MediapipeTracker, MediapipeTrackerConfig

    tracker = MediapipeTracker(MediapipeTrackerConfig(), BuildContext(512, _head(HEAD)))
    spent = {"mediapipe": 0.0}
    for name in ("detect_faces", "detect_landmarks"):  # time MediaPipe's share
        method = getattr(tracker, name)

        def timed(*args, _method=method, **kwargs):
            start = time.perf_counter()
            try:
                return _method(*args, **kwargs)
            finally:
                spent["mediapipe"] += time.perf_counter() - start

        setattr(tracker, name, timed)
    video = astronaut_video(FRAMES)

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return track_video(tracker, video, head_model=HEAD, crop_size=512)

    run()  # start-up: MediaPipe graphs, first-call costs
    spent["mediapipe"] = 0.0
    rounds = max(1, SETTINGS.rounds // 3)
    seq = benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    assert seq.valid.all() and (seq.fit_error < 0.02 * 512).all()
    total = benchmark.stats.stats.mean * rounds if getattr(benchmark, "stats", None) else None
    if total is None:  # benchmarks disabled: one timed call for the table
        start, spent["mediapipe"] = time.perf_counter(), 0.0
        run()
        total, rounds = time.perf_counter() - start, 1
    per_frame = total / (rounds * FRAMES)
    mediapipe = spent["mediapipe"] / (rounds * FRAMES)
    benchmark.extra_info.update(
        head=HEAD, frames=FRAMES, ms_per_frame=round(1e3 * per_frame, 2),
        mediapipe_ms=round(1e3 * mediapipe, 2), fit_ms=round(1e3 * (per_frame - mediapipe), 2),
        torch_threads=torch.get_num_threads(), mode=SETTINGS.mode,
    )
    record_row(
        "tracking (per frame, 512x512, start-up excluded)",
        {
            "head": HEAD,
            "frames": FRAMES,
            "threads": torch.get_num_threads(),
            "ms / frame": round(1e3 * per_frame, 1),
            "mediapipe ms": round(1e3 * mediapipe, 1),
            "fit + rest ms": round(1e3 * (per_frame - mediapipe), 1),
            "frames/s": round(1.0 / per_frame, 2),
            "median fit error px": round(float(seq.fit_error.median()), 3),
        },
    )
