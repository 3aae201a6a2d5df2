"""Tracking (issue #16): the ``mediapipe`` tracker on a 512x512 video of scikit-image's astronaut
moved by a small in-plane roll (+-15 degrees) and pan, through ``gshead.jobs.tracking.track_video``
(the tracker's ``sequence()``: MediaPipe's face mesh in video mode on whole frames, box from the
landmarks, One-Euro crop filter, identity fitted once, warm-started per-frame fits, smoothing).

Reported as the **marginal** per-frame time, start-up excluded: the difference between tracking
``FRAMES`` and ``FRAMES // 4`` frames (each a fresh sequence, so MediaPipe's start and the identity
fit on the first batch cancel), split into MediaPipe (landmarks on the frame, plus the face detector
on calibration frames) and the fit (landmarks -> head parameters). Quick mode: 32 and 8 frames
with the ``procedural`` head, asserting nothing absolute; full mode: 128 and 32 frames with
``anny-head`` through its MediaPipe embedding, asserting the issue's target of 30 frames/s::

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

FRAMES = 32 if SETTINGS.mode == "quick" else 128
HEAD = "procedural" if SETTINGS.mode == "quick" else "anny-head"
TARGET_FPS = 30.0
"""Issue #16's target for the marginal tracking rate at 512x512 on a 2-core machine (full mode)."""


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
def test_tracking_per_frame(benchmark, monkeypatch):
    from gshead.core.components import BuildContext
    from gshead.jobs.tracking import track_video
    from gshead.plugins.trackers.mediapipe import MediapipeSequence, MediapipeTracker, MediapipeTrackerConfig

    tracker = MediapipeTracker(MediapipeTrackerConfig(), BuildContext(512, _head(HEAD)))
    spent = {"mediapipe": 0.0, "fit": 0.0}
    for name, part in (("locate", "mediapipe"), ("fit_points", "fit")):  # time each part
        method = getattr(MediapipeSequence, name)

        def timed(self, *args, _method=method, _part=part, **kwargs):
            start = time.perf_counter()
            try:
                return _method(self, *args, **kwargs)
            finally:
                spent[_part] += time.perf_counter() - start

        monkeypatch.setattr(MediapipeSequence, name, timed)
    video = astronaut_video(FRAMES)
    short = FRAMES // 4

    def run(frames):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return track_video(tracker, frames, head_model=HEAD, crop_size=512)

    run(video[:short])  # start-up: MediaPipe's graphs, first-call costs

    def timed_run(frames):
        before = dict(spent)
        start = time.perf_counter()
        seq = run(frames)
        return seq, time.perf_counter() - start, {k: spent[k] - before[k] for k in spent}

    rounds = max(1, SETTINGS.rounds // 3)
    shorts = [timed_run(video[:short]) for _ in range(rounds)]
    seq = benchmark.pedantic(run, args=(video,), rounds=1, iterations=1, warmup_rounds=0)
    longs = [timed_run(video) for _ in range(rounds)]
    assert seq.valid.all() and (seq.fit_error < 0.02 * 512).all()
    # accuracy on the same run: the tracked head roll follows the known in-plane roll of the video
    truth = torch.tensor([15.0 * math.sin(2 * math.pi * i / max(FRAMES, 2)) for i in range(FRAMES)], dtype=torch.float64)
    roll = torch.rad2deg(seq.params.rotation[:, 2]).double()
    roll_corr = float(torch.corrcoef(torch.stack([roll, truth]))[0, 1])
    assert roll_corr >= 0.95, roll_corr

    def median(values):
        values = sorted(values)
        return values[len(values) // 2]

    frames = FRAMES - short
    per_frame = (median([t for _, t, _ in longs]) - median([t for _, t, _ in shorts])) / frames
    parts = {k: (median([p[k] for *_, p in longs]) - median([p[k] for *_, p in shorts])) / frames for k in spent}
    fps = 1.0 / max(per_frame, 1e-9)
    benchmark.extra_info.update(
        head=HEAD, frames=FRAMES, marginal_ms_per_frame=round(1e3 * per_frame, 2), fps=round(fps, 1),
        mediapipe_ms=round(1e3 * parts["mediapipe"], 2), fit_ms=round(1e3 * parts["fit"], 2),
        mode=SETTINGS.mode,
    )
    record_row(
        "tracking (marginal per frame, 512x512, start-up excluded)",
        {
            "head": HEAD,
            "frames": f"{FRAMES} - {short}",
            "ms / frame": round(1e3 * per_frame, 1),
            "mediapipe ms": round(1e3 * parts["mediapipe"], 1),
            "fit ms": round(1e3 * parts["fit"], 1),
            "rest ms": round(1e3 * (per_frame - parts["mediapipe"] - parts["fit"]), 1),
            "frames/s": round(fps, 1),
            "median fit error px": round(float(seq.fit_error.median()), 3),
            "roll correlation": round(roll_corr, 4),
        },
    )
    if SETTINGS.mode == "full" and getattr(benchmark, "stats", None) is not None:
        assert fps >= TARGET_FPS, f"marginal tracking rate {fps:.1f} frames/s < {TARGET_FPS}"
