"""Live driving (``gshead live``): every frame of a video file or a camera is tracked as it
arrives and drives the avatar at once.

- **Sources.** ``FileSource`` decodes a video with PyAV and hands each frame over at its own
  timestamp (frame ``i`` at ``i / fps`` seconds after the start), as a camera would;
  ``CameraSource`` reads a camera through OpenCV (``cv2.VideoCapture``).
- **Keeping up.** A reader thread keeps only the newest frame. When tracking and rendering fall
  behind, the frames they could not take are dropped and counted: ``LiveReport.dropped`` and every
  ``FrameStats`` say how many, and ``gshead live`` prints and logs them (never silently).
- **Two stages.** A thread tracks the next frame while the caller's thread renders the current
  one, so on two cores the rate is set by the slower of the two, not their sum.
- **Per frame.** ``gshead.jobs.tracking.StreamTracker`` (the pipeline's tracker, its
  ``sequence()``: identity once, warm starts), then relative driving (``gshead.jobs.driving``;
  the first tracked frame is the reference, so the avatar starts as the portrait), then the
  avatar's ``DrivingSession.render``. A frame without a face shows the last good parameters.
- **Timing.** Frame 0 is the start-up (MediaPipe's graphs, the identity fit, the first render):
  a file's clock starts after it, and it is reported apart (``startup_s``), not in frames/s or the
  latencies. Latency is from the moment a frame arrived (was decoded or captured) to the moment its
  rendered image is handed to ``on_frame``; frames/s counts the frames rendered after frame 0
  over the wall time after it.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from gshead.core.errors import InputError

if TYPE_CHECKING:
    from gshead.io.avatar import LoadedAvatar


# ----------------------------------------------------------------------------- sources
class FileSource:
    """A video file played at its own frame rate (``realtime``), or as fast as it decodes."""

    def __init__(self, path: str | Path, realtime: bool = True) -> None:
        from gshead.io.media import read_video

        self.path = Path(path)
        self._frames, fps, self.total = read_video(self.path)
        self.fps = fps if fps and math.isfinite(fps) and fps > 0 else 25.0
        self.realtime = realtime
        self.name = str(self.path)

    def __iter__(self) -> Iterator[Tensor]:
        start = time.perf_counter()
        for i, frame in enumerate(self._frames):
            if i == 1:  # the clock starts when frame 1 is asked for (after the start-up on frame 0)
                start = time.perf_counter() - 1.0 / self.fps
            if self.realtime and i > 0:
                wait = start + i / self.fps - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            yield frame

    def close(self) -> None:
        close = getattr(self._frames, "close", None)
        if close is not None:
            close()


class CameraSource:
    """A camera (``/dev/videoN`` or its number) through OpenCV; frames as they are captured."""

    def __init__(self, device: str) -> None:
        try:
            import cv2
        except ImportError:
            raise InputError(
                f"--video {device}: reading a camera needs OpenCV (pip install 'opencv-python-headless<5')"
            ) from None
        index: int | str = int(device) if device.isdigit() else device
        self._capture = cv2.VideoCapture(index)
        if not self._capture.isOpened():
            raise InputError(f"--video {device}: no camera could be opened there; expected a video file or a camera")
        fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
        self.fps = fps if math.isfinite(fps) and fps > 0 else 30.0
        self.total = 0
        self.name = f"camera {device}"
        self._cv2 = cv2

    def __iter__(self) -> Iterator[Tensor]:
        import numpy as np

        while True:
            ok, bgr = self._capture.read()
            if not ok:
                return
            rgb = self._cv2.cvtColor(bgr, self._cv2.COLOR_BGR2RGB)
            planes = np.multiply(rgb.transpose(2, 0, 1), np.float32(1 / 255), dtype=np.float32)
            yield torch.from_numpy(planes)[None]

    def close(self) -> None:
        self._capture.release()


def open_source(spec: str, realtime: bool = True) -> FileSource | CameraSource:
    """A video file, or a camera given as its number or a ``/dev/video*`` path."""
    if spec.isdigit() or spec.startswith("/dev/video"):
        return CameraSource(spec)
    return FileSource(spec, realtime=realtime)


class _Newest:
    """The newest frame from a reader thread; frames overwritten before they were taken are dropped."""

    def __init__(self, source: Any, lossless: bool = False) -> None:
        self._source = source
        self._lossless = lossless  # the reader waits for each frame to be taken (nothing dropped)
        self._cond = threading.Condition()
        self._item: tuple[int, float, Tensor] | None = None
        self.arrived = 0
        self.dropped = 0
        self.done = False
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self.first_done = threading.Event()  # set by the loop once frame 0 (the start-up) is shown
        self._thread = threading.Thread(target=self._read, name="gshead-live-reader", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _read(self) -> None:
        try:
            for frame in self._source:
                if self._stop.is_set():
                    break
                with self._cond:
                    while self._lossless and self._item is not None and not self._stop.is_set():
                        self._cond.wait(0.5)
                    if self._item is not None:
                        self.dropped += 1
                    self._item = (self.arrived, time.perf_counter(), frame)
                    self.arrived += 1
                    self._cond.notify()
                if self.arrived == 1:  # start-up (MediaPipe's graphs, the identity fit) on frame 0 alone
                    while not self.first_done.wait(0.5) and not self._stop.is_set():
                        pass
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self.error = exc
        finally:
            with self._cond:
                self.done = True
                self._cond.notify()

    def take(self) -> tuple[int, float, Tensor] | None:
        """The newest frame (number, arrival time, [1, 3, H, W]); None once the source ended."""
        with self._cond:
            while self._item is None and not self.done:
                self._cond.wait(0.5)
            item, self._item = self._item, None
            self._cond.notify()
            return item

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=5)


# ----------------------------------------------------------------------------- the loop
@dataclass(frozen=True)
class FrameStats:
    """What ``on_frame`` is told with each rendered frame."""

    index: int  # number of the source frame shown
    shown: int  # frames rendered so far, this one included
    dropped: int  # source frames dropped so far
    latency_ms: float  # arrival of the source frame -> its rendered image
    fps: float  # rendered frames per second so far
    fit_error_px: float  # the tracker's RMS landmark error (NaN: no face, last parameters held)
    face: bool  # whether a face was tracked in this frame


@dataclass(frozen=True)
class LiveReport:
    """The whole run (``run_live``)."""

    source: str
    arrived: int  # source frames that arrived
    shown: int  # frames tracked and rendered
    dropped: int  # frames that arrived while the loop was busy and were never shown
    no_face: int  # shown frames without a usable face (last parameters held)
    seconds: float
    fps: float  # shown / seconds
    source_fps: float
    startup_s: float  # frame 0: MediaPipe's start, the identity fit, the first render (not in fps)
    latency_ms_median: float
    latency_ms_p95: float
    track_ms_median: float  # tracking alone, per shown frame
    render_ms_median: float  # driving + rasterizing + refining, per shown frame

    def line(self) -> str:
        return (
            f"{self.source}: {self.shown} of {self.arrived} frames shown ({self.dropped} dropped, "
            f"{self.no_face} without a face) in {self.seconds:.1f} s after a {self.startup_s:.1f} s "
            f"start-up: {self.fps:.1f} frames/s (source {self.source_fps:g}), latency median {self.latency_ms_median:.0f} ms, "
            f"95th percentile {self.latency_ms_p95:.0f} ms (tracking {self.track_ms_median:.0f} ms, "
            f"rendering {self.render_ms_median:.0f} ms a frame)"
        )


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def run_live(
    loaded: LoadedAvatar,
    source: FileSource | CameraSource,
    on_frame: Callable[[Tensor, FrameStats], Any],
    *,
    size: int | None = None,
    max_frames: int | None = None,
    stop: threading.Event | None = None,
    registry: Any = None,
) -> LiveReport:
    """Track and drive every frame of ``source`` as it arrives; ``on_frame(image [1, 3, S, S] in
    [0, 1], stats)`` gets each rendered frame. Stops when the source ends, after ``max_frames``
    source frames, or when ``stop`` is set. The tracker is the avatar pipeline's; one that fits
    no motion (``frontal``) is refused."""
    from gshead.core.pipeline import build_components
    from gshead.core.registry import get_registry
    from gshead.jobs.driving import relative_to_source
    from gshead.jobs.tracking import StreamTracker, torch_threads

    config = loaded.config
    if not type(config.tracker).fits_motion:
        raise InputError(
            f"{source.name}: the avatar's tracker {config.tracker.name!r} fits no motion; expected a "
            "pipeline whose tracker fits one, e.g. tracker: {name: mediapipe}"
        )
    tracker = build_components(config, ("tracker",), registry or get_registry(), head_model=loaded.head_model)[0][
        "tracker"
    ]
    stream = StreamTracker(tracker, config.source_size, fps=source.fps)
    session = loaded.session(render_size=size)
    source_params = loaded.avatar.source
    reference = last = None
    newest = _Newest(source, lossless=not getattr(source, "realtime", True))
    latencies: list[float] = []
    track_ms: list[float] = []
    render_ms: list[float] = []
    shown = no_face = 0
    started, startup = time.perf_counter(), float("nan")
    # Two stages on the two cores: a thread tracks frame i + 1 while this one renders frame i
    # (MediaPipe and torch release the GIL); the hand-over holds one tracked frame, so tracking
    # never runs more than a frame ahead. torch runs on one thread in each stage.
    handed: queue.Queue = queue.Queue(maxsize=1)
    halt = threading.Event()
    failure: list[BaseException] = []

    def track_stage() -> None:
        try:
            with torch.inference_mode():
                while not halt.is_set():
                    item = newest.take()
                    if item is None:
                        break
                    index, arrived, frame = item
                    t0 = time.perf_counter()
                    params, error = stream(frame)
                    result = (index, arrived, params, error, time.perf_counter() - t0)
                    while not halt.is_set():
                        try:
                            handed.put(result, timeout=0.25)
                            break
                        except queue.Full:
                            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller's thread
            failure.append(exc)
        finally:
            while not halt.is_set():
                try:
                    handed.put(None, timeout=0.25)
                    break
                except queue.Full:
                    pass

    with torch_threads(1):  # torch on one thread in each stage
        newest.start()
        tracking = threading.Thread(target=track_stage, name="gshead-live-tracker", daemon=True)
        tracking.start()
        try:
            with torch.inference_mode():
                while stop is None or not stop.is_set():
                    item = handed.get()
                    if item is None:
                        break
                    index, arrived, params, error, tracked_s = item
                    t1 = time.perf_counter()
                    if params is None:
                        no_face += 1
                    else:
                        reference = params if reference is None else reference
                        last = relative_to_source(params, source_params, reference)
                    if last is None:  # no face tracked yet: the portrait as it was fitted
                        last = source_params
                    image = session.render(last)
                    t2 = time.perf_counter()
                    shown += 1
                    if shown == 1:
                        startup, started = t2 - started, t2
                    else:
                        latencies.append(1e3 * (t2 - arrived))
                        track_ms.append(1e3 * tracked_s)
                        render_ms.append(1e3 * (t2 - t1))
                    elapsed = t2 - started
                    fps = (shown - 1) / elapsed if elapsed > 0 else float("nan")
                    on_frame(
                        image,
                        FrameStats(index, shown, newest.dropped, 1e3 * (t2 - arrived), fps, error, params is not None),
                    )
                    newest.first_done.set()
                    if max_frames is not None and index + 1 >= max_frames:
                        break
        finally:
            halt.set()
            newest.stop()
            tracking.join(timeout=10)
            source.close()
    if failure:
        raise failure[0]
    if newest.error is not None:
        raise newest.error
    if shown and no_face == shown:
        raise InputError(f"{source.name}: no face found in any of its {shown} frames shown ({stream.last_reason})")
    seconds = time.perf_counter() - started
    return LiveReport(
        source=source.name,
        arrived=newest.arrived,
        shown=shown,
        dropped=newest.arrived - shown,
        no_face=no_face,
        seconds=seconds,
        fps=(shown - 1) / seconds if shown > 1 and seconds > 0 else float("nan"),
        source_fps=source.fps,
        startup_s=startup,
        latency_ms_median=_percentile(latencies, 0.5),
        latency_ms_p95=_percentile(latencies, 0.95),
        track_ms_median=_percentile(track_ms, 0.5),
        render_ms_median=_percentile(render_ms, 0.5),
    )
